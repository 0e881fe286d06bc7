"""Giving the C heap's free pages back (glibc's malloc_trim), used by the embedded store's background passes."""

from __future__ import annotations

import platform

import pytest

from tokentrace.api.stores import heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_trims_and_says_whether_it_released_anything() -> None:
    assert heap._TRIM is not None, "glibc has malloc_trim: the store's RSS would keep every freed page"
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # ~128 MiB in the heap, then freed
    del blocks
    assert isinstance(heap.trim(), bool)


def test_without_malloc_trim_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_TRIM", None)
    assert heap.trim() is False
