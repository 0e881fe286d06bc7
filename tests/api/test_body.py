"""api.body.inflate: gzip (several members), deflate with and without its header, bounded output."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.api.body import BodyTooLarge, UndecodableBody, inflate


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=4), st.integers(0, 20_000))
def test_gzip_members_inflate_to_their_concatenation_or_413(parts: list[bytes], limit: int) -> None:
    data = b"".join(gzip.compress(part) for part in parts)
    whole = b"".join(parts)
    if len(whole) <= limit:
        assert inflate(data, "gzip", limit) == whole
    else:
        with pytest.raises(BodyTooLarge):
            inflate(data, "gzip", limit)


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS])
def test_deflate_with_or_without_its_zlib_header(wbits: int) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    data = compressor.compress(b"hello " * 1000) + compressor.flush()
    assert inflate(data, "deflate", 10_000) == b"hello " * 1000


def test_a_bomb_stops_one_byte_past_the_limit() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(compressor.compress(b"\0" * (1 << 20)) for _ in range(256)) + compressor.flush()
    with pytest.raises(BodyTooLarge):
        inflate(bomb, "gzip", 1 << 20)


@pytest.mark.parametrize("data", [b"not gzip", gzip.compress(b"x" * 1000)[:-20], b"\x1f\x8b\x08\x00" + b"\xff" * 64])
def test_corrupt_or_truncated_streams_are_400(data: bytes) -> None:
    with pytest.raises(UndecodableBody):
        inflate(data, "gzip", 1 << 20)
