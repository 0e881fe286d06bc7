"""The segment scanner against an oracle: damage anywhere costs only the records it touches."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.api.stores.wal_format import SEGMENT_MAGIC, frame, scan_segment

payloads = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=40)


def v2_segment(records: list[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    """A format-2 segment and each record's framed byte range."""
    out, ranges = bytearray(SEGMENT_MAGIC), []
    for payload in records:
        start = len(out)
        out += frame(payload) + payload
        ranges.append((start, len(out)))
    return bytes(out), ranges


def v1_segment(records: list[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    """A segment as versions before the format magic wrote it: ``[length][crc32 of payload][payload]``."""
    out, ranges = bytearray(), []
    for payload in records:
        start = len(out)
        out += struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
        ranges.append((start, len(out)))
    return bytes(out), ranges


def recovered(raw: bytes) -> list[bytes]:
    return [raw[start:end] for start, end in scan_segment(raw).records]


@st.composite
def damage(draw: st.DrawFn, size: int) -> tuple[int, bytes]:
    at = draw(st.integers(0, size - 1))
    length = draw(st.integers(1, min(16, size - at)))
    xor = draw(st.binary(min_size=length, max_size=length).filter(lambda b: any(b)))
    return at, xor


@settings(max_examples=300, deadline=None)
@given(records=payloads, data=st.data(), legacy=st.booleans())
def test_damage_costs_only_the_records_it_touches(records: list[bytes], data: st.DataObject, legacy: bool) -> None:
    # Each record told apart by its position: a damaged record whose CRC still holds (damage in framing bytes the
    # scan can resync past) may come back, and must not pass for an equal untouched one.
    records = [index.to_bytes(4, "big") + payload for index, payload in enumerate(records)]
    raw, ranges = (v1_segment if legacy else v2_segment)(records)
    at, xor = data.draw(damage(len(raw)))
    damaged = bytearray(raw)
    for i, b in enumerate(xor):
        damaged[at + i] ^= b
    hit = range(at, at + len(xor))
    untouched = [p for p, (start, end) in zip(records, ranges, strict=True) if end <= hit.start or start >= hit.stop]
    found = recovered(bytes(damaged))
    # Every record the damage missed comes back, in order; nothing else does (the CRC catches the rest).
    assert [p for p in found if p in untouched] == untouched
    assert all(p in records for p in found)
    scan = scan_segment(bytes(damaged))
    if any(start >= hit.stop for start, _ in ranges):
        assert scan.damaged, "bytes skipped between intact records are reported as damage"
        assert scan.torn_tail == 0


@settings(max_examples=200, deadline=None)
@given(records=payloads, data=st.data(), legacy=st.booleans())
def test_a_torn_tail_is_not_damage(records: list[bytes], data: st.DataObject, legacy: bool) -> None:
    raw, ranges = (v1_segment if legacy else v2_segment)(records)
    cut = data.draw(st.integers(0, len(raw)))
    scan = scan_segment(raw[:cut])
    whole = [p for p, (_, end) in zip(records, ranges, strict=True) if end <= cut]
    assert recovered(raw[:cut]) == whole
    assert not scan.damaged
    start = 0 if legacy or cut < len(SEGMENT_MAGIC) else len(SEGMENT_MAGIC)
    assert scan.torn_tail == cut - (ranges[len(whole) - 1][1] if whole else start)


def test_a_damaged_length_is_detected_and_the_next_record_found() -> None:
    raw, ranges = v2_segment([b"a" * 50, b"b" * 50, b"c" * 50])
    damaged = bytearray(raw)
    damaged[ranges[1][0] + 4] ^= 0x01  # the second record's length: 50 -> 51
    scan = scan_segment(bytes(damaged))
    assert recovered(bytes(damaged)) == [b"a" * 50, b"c" * 50]
    assert scan.damaged == [(ranges[1][0], ranges[2][0])]
