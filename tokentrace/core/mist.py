"""The MIST protocol (github.com/greynewell/mist-go; README, "Seed 001 (MIST) compatibility"): envelope, checksum and span mapping.

A MIST message is ``{version, id, source, type, timestamp_ns, payload, checksum?}``; tokentrace takes
``type: "trace.span"`` whose payload is ``{trace_id, span_id, parent_id, operation, start_ns, end_ns,
status, attrs}``. As in mist-go, ``checksum`` is the CRC-32 (IEEE) of the payload's bytes exactly as they
appear in the message, and 0 or absent means "not checked".

Mapping onto a :class:`Span`: ``source`` → ``caller``, ``operation`` → ``name`` (also kept in the attribute
``mist.operation``, which the aggregates group for ``/stats``), ``parent_id`` → ``parent_span_id``,
latency from the nanosecond timestamps; ``attrs.tokens_in``/``tokens_out``/``total_tokens``/``cost_usd``/
``model``/``provider`` become the span's fields, a string ``attrs.error`` its ``error``, and every other
attribute an attribute. Pure: no I/O.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from typing import Annotated, Any, Final

import msgspec

from tokentrace.core.span import STATUSES, AttributeValue, Span, Status
from tokentrace.core.timefmt import format_ms, parse_rfc3339_ms

__all__ = [
    "MAX_MESSAGE_BYTES",
    "OPERATION_ATTRIBUTE",
    "STATUS_ATTRIBUTE",
    "TRACE_SPAN",
    "UNKNOWN_MODEL",
    "VERSION",
    "Envelope",
    "MistError",
    "TraceSpan",
    "checksum",
    "decode_message",
    "encode_message",
    "from_span",
    "to_span",
]

VERSION: Final = "1"
TRACE_SPAN: Final = "trace.span"
#: mist-go's ``protocol.MaxMessageSize``: the largest message accepted (10 MiB).
MAX_MESSAGE_BYTES: Final = 10 << 20
#: The attribute holding a MIST span's ``operation``; ``GET /stats`` groups it into ``by_operation``.
OPERATION_ATTRIBUTE: Final = "mist.operation"
#: The attribute keeping a status other than ok/error/timeout (the span itself counts as ``ok``).
STATUS_ATTRIBUTE: Final = "mist.status"
#: The model of a MIST span without ``attrs.model`` (e.g. a non-LLM operation).
UNKNOWN_MODEL: Final = "unknown"

_INT64 = 2**63 - 1
_NS_PER_MS = 1_000_000
_Nanos = Annotated[int, msgspec.Meta(ge=0, le=_INT64)]
_MAPPED = frozenset({"tokens_in", "tokens_out", "total_tokens", "cost_usd", "model", "provider"})
_RESERVED = frozenset({OPERATION_ATTRIBUTE, STATUS_ATTRIBUTE})
#: Span fields as a MIST sender knows them, for error messages.
_MIST_NAMES = {
    "prompt_tokens": "payload.attrs.tokens_in",
    "comp_tokens": "payload.attrs.tokens_out",
    "total_tokens": "payload.attrs.total_tokens",
    "cost_usd": "payload.attrs.cost_usd",
    "latency_ms": "latency (end_ns - start_ns, in ms)",
    "model": "payload.attrs.model",
    "provider": "payload.attrs.provider",
    "caller": "source",
    "attributes.eval.score": "payload.attrs.eval.score",
}
_TOO_DEEP = "invalid trace.span payload: objects or arrays nested too deep"
_FIELD = re.compile(r"^(attributes\.eval\.score|\w+)")


class MistError(ValueError):
    """A message that cannot be accepted; the text names the field at fault."""


class Envelope(msgspec.Struct, omit_defaults=True):
    """The MIST envelope; ``payload`` is kept as raw bytes so the checksum covers exactly what was sent."""

    version: str
    id: str
    source: str
    type: str
    payload: msgspec.Raw
    timestamp_ns: Annotated[int, msgspec.Meta(ge=-_INT64 - 1, le=_INT64)] = 0
    checksum: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] | None = None


class TraceSpan(msgspec.Struct, omit_defaults=True):
    """mist-go's ``protocol.TraceSpan`` (MTTP). Timestamps are Unix nanoseconds; 0 means unset."""

    trace_id: str
    span_id: str = ""
    parent_id: str = ""
    operation: str = ""
    start_ns: _Nanos = 0
    end_ns: _Nanos = 0
    status: str = ""
    attrs: dict[str, Any] | None = None


class _Attrs(msgspec.Struct):
    """The attributes that map onto span fields, with their types."""

    tokens_in: int | float | None = None
    tokens_out: int | float | None = None
    total_tokens: int | float | None = None
    cost_usd: int | float | None = None
    model: str | None = None
    provider: str | None = None


_envelope = msgspec.json.Decoder(Envelope)
_trace_span = msgspec.json.Decoder(TraceSpan)
_encoder = msgspec.json.Encoder()


def checksum(payload: bytes) -> int:
    """CRC-32 (IEEE 802.3) of ``payload``, as mist-go's ``crc32.ChecksumIEEE``."""
    return zlib.crc32(payload)


def _at(exc: msgspec.MsgspecError, root: str) -> str:
    return str(exc).replace("`$", f"`{root}")


def decode_message(body: bytes) -> tuple[Envelope, TraceSpan]:
    """Decode and check a ``trace.span`` message: version, type, checksum, payload. Raises MistError."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise MistError(f"message of {len(body)} bytes exceeds the MIST limit of {MAX_MESSAGE_BYTES}")
    try:
        envelope = _envelope.decode(body)
    except msgspec.ValidationError as exc:
        raise MistError(f"invalid MIST envelope: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MistError(f"malformed JSON: {exc}") from None
    except RecursionError:  # msgspec walks nesting recursively (a Raw payload too), up to the recursion limit
        raise MistError(_TOO_DEEP) from None
    for field in ("id", "source"):
        if not getattr(envelope, field):
            raise MistError(f"invalid MIST envelope: {field} must not be empty")
    if envelope.version != VERSION:
        raise MistError(f"unsupported MIST version {envelope.version!r} (supported: {VERSION!r})")
    if envelope.type != TRACE_SPAN:
        raise MistError(f"expected type {TRACE_SPAN!r}, got {envelope.type!r}")
    raw = bytes(envelope.payload)
    if envelope.checksum and envelope.checksum != checksum(raw):
        raise MistError(f"checksum mismatch: message says {envelope.checksum}, payload has {checksum(raw)}")
    try:
        span = _trace_span.decode(raw)
    except msgspec.ValidationError as exc:
        raise MistError(f"invalid trace.span payload: {_at(exc, 'payload')}") from None
    except RecursionError:
        raise MistError(_TOO_DEEP) from None
    if not span.trace_id:
        raise MistError("payload.trace_id must not be empty")
    return envelope, span


def _attribute(value: object) -> AttributeValue | None:
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 - 1 <= value <= _INT64:
        return float(value)  # past 64 bits: the stores' MessagePack cannot hold it as an integer
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return _encoder.encode(value).decode()  # lists and objects are kept as their JSON text


def _status(raw: str) -> tuple[Status, str | None]:
    if raw in STATUSES:
        return raw, None
    return "ok", (raw or None)


def _times(span: TraceSpan) -> tuple[str | None, str | None, float | None]:
    start, end = span.start_ns, span.end_ns
    if not start:
        if end:
            raise MistError("payload.end_ns is set but payload.start_ns is 0")
        return None, None, None
    if not end:
        return format_ms(start // _NS_PER_MS), None, None  # a span never ended has no latency
    if end < start:
        raise MistError(f"payload.end_ns ({end}) is before payload.start_ns ({start})")
    return format_ms(start // _NS_PER_MS), format_ms(end // _NS_PER_MS), (end - start) / _NS_PER_MS


def to_span(source: str, span: TraceSpan) -> Span:
    """The tokentrace span of a MIST span sent by ``source``. Raises MistError naming the field."""
    attrs = span.attrs or {}
    try:
        known = msgspec.convert({k: v for k, v in attrs.items() if k in _MAPPED}, _Attrs)
    except msgspec.ValidationError as exc:
        raise MistError(f"invalid trace.span payload: {_at(exc, 'payload.attrs')}") from None
    status, unknown_status = _status(span.status)
    error = attrs.get("error")
    attributes: dict[str, AttributeValue] = {OPERATION_ATTRIBUTE: span.operation}
    for key, value in attrs.items():
        if key in _MAPPED or key in _RESERVED or (key == "error" and isinstance(error, str)):
            continue
        try:
            kept = _attribute(value)
        except RecursionError:
            raise MistError(_TOO_DEEP) from None
        if kept is not None:
            attributes[key] = kept
    if unknown_status is not None:
        attributes[STATUS_ATTRIBUTE] = unknown_status
    started_at, ended_at, latency_ms = _times(span)
    prompt, comp, total = known.tokens_in, known.tokens_out, known.total_tokens
    try:
        return Span(
            trace_id=span.trace_id,
            span_id=span.span_id,
            parent_span_id=span.parent_id or None,
            name=span.operation,
            model=known.model or UNKNOWN_MODEL,
            provider=known.provider or "",
            prompt_tokens=prompt,
            comp_tokens=comp,
            total_tokens=0 if prompt is None and comp is None and total is None else total,
            cost_usd=known.cost_usd,
            latency_ms=latency_ms,
            status=status,
            error=error if isinstance(error, str) else None,
            caller=source,
            started_at=started_at,
            ended_at=ended_at,
            attributes=attributes,
        )
    except ValueError as exc:
        message = _FIELD.sub(lambda m: _MIST_NAMES.get(m.group(1), m.group(1)), str(exc), count=1)
        raise MistError(f"invalid trace.span payload: {message}") from None


def from_span(span: Span, now_ns: int | None = None) -> TraceSpan:
    """The MIST span of a tokentrace span (the inverse of :func:`to_span` for what MIST can carry).

    A span without ``started_at`` but with a latency ends at ``now_ns``; one without either has no
    timestamps (the server stamps it on arrival).
    """
    start = end = 0
    latency_ns = None if span.latency_ms is None else round(span.latency_ms * _NS_PER_MS)
    if span.started_at is not None:
        start = parse_rfc3339_ms(span.started_at) * _NS_PER_MS
        if latency_ns is not None:
            end = start + latency_ns
        elif span.ended_at is not None:
            end = parse_rfc3339_ms(span.ended_at) * _NS_PER_MS
    elif latency_ns is not None:
        end = parse_rfc3339_ms(span.ended_at) * _NS_PER_MS if span.ended_at else (now_ns or time.time_ns())
        start = max(1, end - latency_ns)
    skip = _RESERVED | _MAPPED | ({"error"} if span.error is not None else set())
    attrs: dict[str, Any] = {k: v for k, v in span.attributes.items() if k not in skip}
    attrs["model"] = span.model
    if span.provider:
        attrs["provider"] = span.provider
    if span.prompt_tokens is not None:
        attrs["tokens_in"] = span.prompt_tokens
    if span.comp_tokens is not None:
        attrs["tokens_out"] = span.comp_tokens
    if span.prompt_tokens is None and span.comp_tokens is None:
        attrs["total_tokens"] = span.total_tokens
    if span.cost_usd is not None:
        attrs["cost_usd"] = span.cost_usd
    if span.error is not None:
        attrs["error"] = span.error
    return TraceSpan(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_id=span.parent_span_id or "",
        operation=span.name,
        start_ns=start,
        end_ns=end,
        status=span.status,
        attrs=attrs,
    )


def encode_message(
    source: str, span: TraceSpan, *, message_id: str | None = None, timestamp_ns: int | None = None
) -> bytes:
    """A ``trace.span`` message with its checksum, as mist-go's ``MarshalWithChecksum`` writes it."""
    payload = _encoder.encode(span)
    envelope = Envelope(
        version=VERSION,
        id=message_id or os.urandom(16).hex(),
        source=source,
        type=TRACE_SPAN,
        payload=msgspec.Raw(payload),
        timestamp_ns=time.time_ns() if timestamp_ns is None else timestamp_ns,
        checksum=checksum(payload) or None,
    )
    return _encoder.encode(envelope)
