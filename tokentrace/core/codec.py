"""Encoders and decoders for spans: JSON (HTTP, stdout, files) and the versioned Kafka wire format.

The Kafka wire format, version 1: one Kafka message carries one batch of spans, encoded as a MessagePack
map ``{"v": 1, "spans": [<span>, ...]}`` whose span maps have exactly the JSON field names. A consumer
rejects any other ``v`` as a poison message rather than guessing. ``SPAN_TOPIC`` is the topic such messages
go to unless ``kafka.topic`` names another (the SDK's ``KafkaTransport`` and the workers share it).
"""

from __future__ import annotations

import msgspec

from tokentrace.core.span import Span

__all__ = [
    "SPAN_TOPIC",
    "WIRE_VERSION",
    "SpanBatch",
    "UnknownWireVersion",
    "decode_json_spans",
    "decode_wire",
    "encode_json",
    "encode_wire",
]

WIRE_VERSION = 1
#: The default span topic (``kafka.topic``).
SPAN_TOPIC = "tokentrace.spans"


class SpanBatch(msgspec.Struct):
    """A batch of spans as carried by one Kafka message."""

    v: int
    spans: list[Span]


class _VersionOnly(msgspec.Struct):
    v: int


class UnknownWireVersion(ValueError):
    """The message's wire-format version is not one this build understands."""


_json_spans = msgspec.json.Decoder(Span | list[Span])
_json_encoder = msgspec.json.Encoder()
_wire_encoder = msgspec.msgpack.Encoder()
_wire_version = msgspec.msgpack.Decoder(_VersionOnly)
_wire_batch = msgspec.msgpack.Decoder(SpanBatch)


def decode_json_spans(body: bytes) -> list[Span]:
    """Decode a JSON body holding one span object or an array of spans.

    Raises ``msgspec.DecodeError`` (or its subclass ``ValidationError``) with the JSON path at fault.
    """
    decoded = _json_spans.decode(body)
    return decoded if isinstance(decoded, list) else [decoded]


def encode_json(value: object) -> bytes:
    """Encode any msgspec-supported value (a span, a list, a response body) as compact JSON."""
    return _json_encoder.encode(value)


def encode_wire(spans: list[Span]) -> bytes:
    """Encode spans as one Kafka message value (wire format version 1)."""
    return _wire_encoder.encode(SpanBatch(WIRE_VERSION, spans))


#: How ``encode_wire`` starts every message: a map of two entries, ``"v"`` first, version 1.
_V1_PREFIX = b"\x82\xa1v\x01"


def decode_wire(payload: bytes) -> list[Span]:
    """Decode one Kafka message value. Raises UnknownWireVersion or msgspec.DecodeError on bad input."""
    if payload[:4] == _V1_PREFIX:  # this build's own messages skip the version pass (a fifth of the time)
        try:
            return _wire_batch.decode(payload).spans
        except msgspec.DecodeError:
            pass  # refused: decide (and say why) as for any other message
    version = _wire_version.decode(payload).v
    if version != WIRE_VERSION:
        raise UnknownWireVersion(f"unknown wire format version {version} (this build reads {WIRE_VERSION})")
    return _wire_batch.decode(payload).spans
