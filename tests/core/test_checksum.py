"""``checksum.crc32``: the compiled CRC (``crc32fast``) gives ``zlib.crc32``'s numbers, so logs and snapshots
written by either read back with the other."""

from __future__ import annotations

import zlib
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.test_native import REQUIRED
from tokentrace.core import checksum, native

pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.crc32 is None, reason="compiled module not built")]


@given(st.binary(max_size=5000), st.integers(0, 2**32 - 1), st.integers(0, 70), st.integers(0, 70))
def test_the_compiled_crc_is_zlibs(data: bytes, value: int, head: int, tail: int) -> None:
    assert native.crc32 is not None
    view = memoryview(data)[head : max(head, len(data) - tail)]
    assert checksum.crc32(data, value) == zlib.crc32(data, value)
    assert checksum.crc32(view) == zlib.crc32(view)
    with mock.patch.object(native, "crc32", None):
        assert checksum.crc32(data, value) == zlib.crc32(data, value)


def test_a_crc_continues_across_pieces_and_refuses_a_strided_view() -> None:
    data = bytes(range(256)) * 40
    assert checksum.crc32(data[1000:], checksum.crc32(data[:1000])) == zlib.crc32(data)
    with pytest.raises(BufferError):
        checksum.crc32(memoryview(data)[::2])
