"""What the embedded store writes to its log: a batch of spans, under an idempotency key or not.

A plain record is the span wire format (``encode_wire``, a msgpack map: first byte 0x80-0x8f). A keyed record
is ``b"K"`` + ``[accepted at, ms i64][key length u16]`` + the UTF-8 key + the wire format: the key becomes
durable in the same fsync as its batch, so after a restart a retry of that batch is still recognised.
"""

from __future__ import annotations

import struct

from tokentrace.core.codec import decode_wire, encode_wire
from tokentrace.core.span import Span

__all__ = ["decode_record", "encode_record", "wire_record"]

_KEYED = b"K"
_HEAD = struct.Struct("<qH")


def encode_record(spans: list[Span], key: str | None, at_ms: int) -> bytes:
    return wire_record(encode_wire(spans), key, at_ms)


def wire_record(wire: bytes, key: str | None, at_ms: int) -> bytes:
    """The record of a batch already in the wire format (``encode_wire``)."""
    if key is None:
        return wire
    raw = key.encode()
    return _KEYED + _HEAD.pack(at_ms, len(raw)) + raw + wire


def decode_record(payload: bytes) -> tuple[list[Span], str | None, int]:
    """``(spans, key, accepted at)``; raises as ``decode_wire`` does (struct.error for a cut keyed header)."""
    if payload[:1] != _KEYED:
        return decode_wire(payload), None, 0
    at_ms, length = _HEAD.unpack_from(payload, 1)
    start = 1 + _HEAD.size
    key = bytes(payload[start : start + length]).decode()
    return decode_wire(payload[start + length :]), key, at_ms
