"""How write-ahead log segments are framed on disk, and a scanner that reads past damaged bytes.

Format 2 (written since data-file hardening): a segment starts with the 8-byte magic ``TTWAL\\x00\\x02\\n``; each
record is ``[sync u32 'TTR2'][length u32][crc32 u32][payload]`` where the CRC covers the length and the payload,
so a damaged length is detected too. After damaged bytes the scanner looks for the next sync word whose record
checks out, so every intact record after the damage is recovered.

Format 1 (earlier versions, read only): no segment magic; records are ``[length u32][crc32 of payload u32]
[payload]``. After damage the scanner tries every later offset for a record whose CRC matches.

Bytes after the last intact record that hold no intact record are a *torn tail*: what a crash in the middle of
an append leaves (that append was never acknowledged). Bytes skipped *between* intact records are *damage*.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tokentrace.core.checksum import crc32

__all__ = ["SEGMENT_MAGIC", "SegmentScan", "frame", "scan_segment"]

SEGMENT_MAGIC = b"TTWAL\x00\x02\n"
_SYNC = 0x32525454  # b"TTR2" little-endian
_SYNC_BYTES = struct.pack("<I", _SYNC)
_V2 = struct.Struct("<III")
_V1 = struct.Struct("<II")
_LENGTH = struct.Struct("<I")


def frame(payload: bytes) -> bytes:
    """The format-2 record header for ``payload`` (write it, then the payload)."""
    length = _LENGTH.pack(len(payload))
    return _SYNC_BYTES + length + _LENGTH.pack(crc32(payload, crc32(length)))


@dataclass
class SegmentScan:
    """What a segment holds: intact payloads (as ``(start, end)`` offsets), damaged ranges, a torn tail."""

    version: int
    size: int
    records: list[tuple[int, int]] = field(default_factory=list)
    damaged: list[tuple[int, int]] = field(default_factory=list)
    torn_tail: int = 0

    @property
    def damaged_bytes(self) -> int:
        return sum(end - start for start, end in self.damaged)

    def describe(self) -> str:
        text = f"format {self.version}, {len(self.records)} intact records"
        if self.damaged:
            text += f", {len(self.damaged)} damaged region(s) ({self.damaged_bytes} bytes at offset"
            text += f" {', '.join(str(start) for start, _ in self.damaged)}) skipped"
        if self.torn_tail:
            text += f", torn tail of {self.torn_tail} bytes"
        return text


def _v2_end(data: memoryview, pos: int) -> int:
    """End of the intact format-2 record at ``pos``, or -1."""
    if pos + _V2.size > len(data):
        return -1
    sync, length, crc = _V2.unpack_from(data, pos)
    end = pos + _V2.size + length
    if sync != _SYNC or end > len(data):
        return -1
    return end if crc32(data[pos + _V2.size : end], crc32(data[pos + 4 : pos + 8])) == crc else -1


def _v1_end(data: memoryview, pos: int) -> int:
    """End of the intact format-1 record at ``pos``, or -1 (an empty payload never was a record)."""
    if pos + _V1.size > len(data):
        return -1
    length, crc = _V1.unpack_from(data, pos)
    end = pos + _V1.size + length
    if length == 0 or end > len(data):
        return -1
    return end if crc32(data[pos + _V1.size : end]) == crc else -1


def _next_v2(data: memoryview, raw: bytes, start: int) -> int:
    at = raw.find(_SYNC_BYTES, start)
    while at != -1:
        if _v2_end(data, at) != -1:
            return at
        at = raw.find(_SYNC_BYTES, at + 1)
    return -1


def _next_v1(data: memoryview, _raw: bytes, start: int) -> int:
    for at in range(start, len(data) - _V1.size + 1):
        if _v1_end(data, at) != -1:
            return at
    return -1


def _scan(raw: bytes, version: int, start: int) -> SegmentScan:
    data = memoryview(raw)
    end_of, next_of = (_v2_end, _next_v2) if version == 2 else (_v1_end, _next_v1)
    scan = SegmentScan(version, len(raw))
    pos = start
    while pos < len(raw):
        end = end_of(data, pos)
        if end != -1:
            header = _V2.size if version == 2 else _V1.size
            scan.records.append((pos + header, end))
            pos = end
            continue
        following = next_of(data, raw, pos + 1)
        if following == -1:
            scan.torn_tail = len(raw) - pos
            break
        scan.damaged.append((pos, following))
        pos = following
    return scan


def scan_segment(raw: bytes) -> SegmentScan:
    """Scan a segment of either format; a segment whose magic is damaged is read as whichever recovers more."""
    if raw.startswith(SEGMENT_MAGIC):
        return _scan(raw, 2, len(SEGMENT_MAGIC))
    if SEGMENT_MAGIC.startswith(raw):  # empty, or cut while its magic was written
        return SegmentScan(2, len(raw), torn_tail=len(raw))
    legacy = _scan(raw, 1, 0)
    if legacy.records and not legacy.damaged and not legacy.torn_tail:
        return legacy
    current = _scan(raw, 2, 0)
    return current if len(current.records) > len(legacy.records) else legacy
