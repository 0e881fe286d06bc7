"""Giving freed heap memory back to the operating system (glibc's ``malloc_trim``), where there is one.

Frozen buckets are rewritten whole when writes reach them (tokentrace/core/frozen.py) and projections are decoded
and dropped by the thousand: the freed blocks stay in the C heap, counted in the process's RSS, until the heap is
trimmed. ``trim`` releases every free page; a no-op where the C library has no ``malloc_trim``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["trim"]


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_TRIM = _malloc_trim()


def trim() -> bool:
    """Release the heap's free pages to the OS; whether anything was released (False where unsupported)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
