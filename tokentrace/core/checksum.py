"""``crc32``: the CRC-32 (IEEE) the write-ahead log and snapshots frame their records with, as ``zlib.crc32``.

Compiled where the module is built (``crc32fast``: carry-less multiplication, 64 bytes a step; zlib's tables take
about a cycle a byte, a few per cent of a server's ingest); ``zlib.crc32`` otherwise. The same numbers either way.
"""

from __future__ import annotations

import zlib

from tokentrace.core import native

__all__ = ["crc32"]


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """The CRC-32 of ``data`` (bytes or a contiguous view of them), continuing from ``value``."""
    compiled = native.crc32
    if compiled is not None:
        return compiled(data, value)
    return zlib.crc32(data, value)
