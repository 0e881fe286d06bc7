"""The snapshot container: a magic, the payload's length and CRC32, then the payload (msgpack).

``TTSNAP\\x00\\x02`` + ``[length u64][crc32 u32]`` + payload. A truncated file, a changed byte or a damaged header
is ``DamagedFile``; nothing damaged is ever decoded. Snapshots of earlier versions (bare msgpack, no checksum,
recognised by their first byte, a msgpack map) are still read, unverified.
"""

from __future__ import annotations

import struct

from tokentrace.core.checksum import crc32

__all__ = ["SNAPSHOT_MAGIC", "DamagedFile", "open_snapshot", "seal_snapshot"]

SNAPSHOT_MAGIC = b"TTSNAP\x00\x02"
_HEADER = struct.Struct("<QI")
_LEGACY_FIRST_BYTES = range(0x80, 0x90)  # msgpack fixmap: how version-1 snapshots (a Struct) begin


class DamagedFile(Exception):
    """A data file whose bytes do not check out; the message says how."""


def seal_snapshot(payload: bytes) -> bytes:
    """The header to write before ``payload``."""
    return SNAPSHOT_MAGIC + _HEADER.pack(len(payload), crc32(payload))


def open_snapshot(raw: bytes) -> tuple[memoryview, bool]:
    """The verified payload of a snapshot file and whether it had a checksum; raises DamagedFile."""
    if raw.startswith(SNAPSHOT_MAGIC):
        start = len(SNAPSHOT_MAGIC) + _HEADER.size
        if len(raw) < start:
            raise DamagedFile(f"truncated: {len(raw)} bytes, shorter than its header")
        length, crc = _HEADER.unpack_from(raw, len(SNAPSHOT_MAGIC))
        if len(raw) != start + length:
            raise DamagedFile(f"{len(raw)} bytes where its header says {start + length} (truncated or extended)")
        payload = memoryview(raw)[start:]
        if crc32(payload) != crc:
            raise DamagedFile("checksum mismatch: its content changed after it was written")
        return payload, True
    if raw and raw[0] in _LEGACY_FIRST_BYTES:
        return memoryview(raw), False
    raise DamagedFile("not a snapshot: unknown or damaged header" if raw else "empty file")
