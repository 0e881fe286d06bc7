"""The Kafka wire format: what decodes, what is refused, and that the fast path decides as the careful one."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core.codec import (
    WIRE_VERSION,
    UnknownWireVersion,
    _wire_batch,
    _wire_version,
    decode_wire,
    encode_wire,
)
from tokentrace.core.span import Span

SPAN = {"trace_id": "t", "span_id": "s", "model": "gpt-4o", "prompt_tokens": 3, "cost_usd": 0.01}


def reference_decode(payload: bytes) -> list[Span]:
    """Read the version first, always (what decode_wire does for any message it did not encode itself)."""
    version = _wire_version.decode(payload).v
    if version != WIRE_VERSION:
        raise UnknownWireVersion(f"unknown wire format version {version} (this build reads {WIRE_VERSION})")
    return _wire_batch.decode(payload).spans


def outcome(decode: object, payload: bytes) -> tuple[str, object]:
    try:
        spans = decode(payload)  # type: ignore[operator]
    except UnknownWireVersion as exc:
        return "unknown version", str(exc)
    except msgspec.DecodeError:
        return "refused", None
    return "spans", msgspec.json.encode(spans)


def test_a_batch_round_trips() -> None:
    spans = [msgspec.convert(SPAN, Span), msgspec.convert({**SPAN, "span_id": "u", "attributes": {"a": 1}}, Span)]
    assert decode_wire(encode_wire(spans)) == spans


def test_any_key_order_decodes_and_any_other_version_is_refused_by_name() -> None:
    spans_first = msgspec.msgpack.encode({"spans": [SPAN], "v": 1})
    assert [s.span_id for s in decode_wire(spans_first)] == ["s"]
    for payload in (msgspec.msgpack.encode({"v": 2, "spans": []}), msgspec.msgpack.encode({"spans": [], "v": 2})):
        with pytest.raises(UnknownWireVersion, match="version 2"):
            decode_wire(payload)
    with pytest.raises(msgspec.DecodeError):
        decode_wire(msgspec.msgpack.encode({"v": 1, "other": []}))  # this build's prefix, no spans


payloads = st.lists(
    st.sampled_from(
        [("v", 1), ("v", 2), ("v", "1"), ("spans", [SPAN]), ("spans", []), ("spans", [{"model": ""}]), ("x", 0)]
    ),
    max_size=4,
)


@given(payloads, st.randoms())
@settings(max_examples=300)
def test_decoding_decides_as_reading_the_version_first(items: list[tuple[str, object]], rng: random.Random) -> None:
    """Maps of any keys, in any order, duplicated or not (msgpack allows it): the same spans, the same refusal."""
    rng.shuffle(items)
    body = bytearray([0x80 | len(items)])
    for key, value in items:
        body += msgspec.msgpack.encode(key) + msgspec.msgpack.encode(value)
    payload = bytes(body)
    assert outcome(decode_wire, payload) == outcome(reference_decode, payload)
