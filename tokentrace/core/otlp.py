"""OTLP trace spans to tokentrace spans, by the OpenTelemetry GenAI semantic conventions. Pure: no I/O.

Where a value comes from (the first attribute present wins):

- ``model``: ``gen_ai.response.model``, then ``gen_ai.request.model``. The response names the model that
  actually served and billed the call (a dated snapshot, or the model behind an Azure deployment name);
  a request model that differs is kept as the attribute ``gen_ai.request.model``.
- ``provider``: ``gen_ai.provider.name``, then the older ``gen_ai.system``, normalised to the price
  table's provider ids (``aws.bedrock`` → ``aws``, ``gcp.vertex_ai`` → ``google``, ...; see
  ``PROVIDERS``); a value that changed is kept as the attribute ``gen_ai.provider.name``.
- ``prompt_tokens``: ``gen_ai.usage.input_tokens`` (older: ``gen_ai.usage.prompt_tokens``);
  ``comp_tokens``: ``gen_ai.usage.output_tokens`` (older: ``gen_ai.usage.completion_tokens``).
- cached prompt tokens: ``gen_ai.usage.cache_read.input_tokens`` and
  ``gen_ai.usage.cache_creation.input_tokens``, or the older spellings in ``CACHE_READ_NAMES`` and
  ``CACHE_WRITE_NAMES``; stored under the names ``core.ingest`` prices from. The conventions say
  ``input_tokens`` includes them for every provider (instrumentations add Anthropic's and Bedrock's
  separately reported cache counts in), which is also what ``prompt_tokens`` means here, so it is taken
  as is. Only when the cached counts exceed ``input_tokens`` can the sender not have followed that, and
  then they are added to it. Either way cached tokens are priced once, at the cache rates.
- ``status``: ``error`` when the OTLP status is ``STATUS_CODE_ERROR`` or ``error.type`` is set;
  ``timeout`` when the error type (``error.type``, else the first ``exception`` event's
  ``exception.type``) mentions a timeout. ``error``: the error type and the status message.
- ``latency_ms`` = end - start (to the nanosecond), ``started_at``/``ended_at`` from the span's times,
  ``trace_id``/``span_id``/``parent_span_id`` as lowercase hex, ``name`` the span name, ``caller`` the
  resource's ``service.name``.
- quality (``eval.score``): ``gen_ai.evaluation.score.value``, then an ``eval.score`` attribute, then the
  first ``gen_ai.evaluation.result`` span event with a score; a score that is not a number in range
  is dropped (the span is kept).
- other span attributes with a string, bool, int or finite double value are kept, except message
  contents (``CONTENT_ATTRIBUTES``, ``gen_ai.prompt.*``, ``gen_ai.completion.*``), per-call ids
  (``gen_ai.response.id``, ``gen_ai.tool.call.id``), strings over 1024 characters and the usage
  attributes consumed above; past the span caps of ``core.limits`` (128 attributes, 32 KiB of text) the
  remaining attributes are dropped. Resource attributes other than ``service.name`` are not kept.

A span is skipped, and counted by reason, when it has no model (``no_model``: not a GenAI span), when
it is an agent or workflow invocation whose usage sums the inference spans below it (``aggregate``:
``invoke_workflow``, and ``invoke_agent`` unless its kind is CLIENT, i.e. a remote agent whose
inference is not traced here), when it has a model but no token count (``no_tokens``), or when a value
is out of range (``invalid``: negative or huge counts, times past year 9999, control characters, text
over the caps of ``core.limits``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OTLPSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as OTLPStatus

from tokentrace.core.ingest import CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE
from tokentrace.core.limits import MAX_ATTRIBUTE_KEY_CHARS, MAX_ATTRIBUTES, MAX_ATTRIBUTES_CHARS, text_limit_error
from tokentrace.core.span import EVAL_SCORE, MAX_SCORE, MAX_TOKENS, AttributeValue, Span, Status
from tokentrace.core.timefmt import format_ms

__all__ = [
    "CACHE_READ_NAMES",
    "CACHE_WRITE_NAMES",
    "CONTENT_ATTRIBUTES",
    "PROVIDERS",
    "SKIP_REASONS",
    "Conversion",
    "convert_request",
    "convert_span",
]

REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
PROVIDER_NAME = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"
INPUT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
OUTPUT_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
#: Cache-read prompt tokens: the semantic conventions' name first, then OpenLLMetry's and Sentry's.
CACHE_READ_NAMES = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.input_tokens.cached",
)
#: Cache-write (cache creation) prompt tokens, in the same order.
CACHE_WRITE_NAMES = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.input_tokens.cache_write",
)
OPERATION = "gen_ai.operation.name"
ERROR_TYPE = "error.type"
SCORE = "gen_ai.evaluation.score.value"
EVALUATION_EVENT = "gen_ai.evaluation.result"
SERVICE_NAME = "service.name"
#: Prompts, completions, instructions and tool payloads: content, not telemetry; never stored.
CONTENT_ATTRIBUTES = frozenset(
    {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.retrieval.documents",
        "gen_ai.retrieval.query.text",
        "gen_ai.prompt",
        "gen_ai.completion",
    }
)
_CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.")
#: Unique per call: a group per value would only fill the attribute caps.
_PER_CALL_IDS = frozenset({"gen_ai.response.id", "gen_ai.tool.call.id"})
_CONSUMED = frozenset(
    {RESPONSE_MODEL, REQUEST_MODEL, PROVIDER_NAME, SYSTEM, SCORE, EVAL_SCORE, ERROR_TYPE}
    | set(INPUT_TOKENS)
    | set(OUTPUT_TOKENS)
    | set(CACHE_READ_NAMES)
    | set(CACHE_WRITE_NAMES)
)
MAX_ATTRIBUTE_TEXT = 1024
#: Attributes kept of an OTLP span, leaving room for the ones the conversion adds (request model, provider,
#: cache counts, score: at most 6, each a short key and a value within MAX_ATTRIBUTE_TEXT).
_KEPT_ATTRIBUTES = MAX_ATTRIBUTES - 8
_KEPT_CHARS = MAX_ATTRIBUTES_CHARS - 8 * (MAX_ATTRIBUTE_TEXT + 64)
MAX_ERROR_TEXT = 1024
#: The well-known ``gen_ai.provider.name`` / ``gen_ai.system`` values, as the price table names them.
PROVIDERS: Mapping[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "az.ai.openai": "azure",
    "az.ai.inference": "azure",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "vertex_ai": "google",
    "gemini": "google",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "groq": "groq",
    "perplexity": "perplexity",
}
#: Operations whose usage is the sum of the inference spans they contain.
_AGGREGATE_OPERATIONS = frozenset({"invoke_agent", "invoke_workflow"})
SKIP_REASONS = ("no_model", "aggregate", "no_tokens", "invalid")
#: Examples of skipped spans quoted in the partial-success message.
_MAX_EXAMPLES = 3


@dataclass
class Conversion:
    """The spans of one request that map to tokentrace spans, and what was skipped, by reason."""

    spans: list[Span] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return sum(self.skipped.values())

    def message(self) -> str:
        """The partial-success ``error_message``: counts by reason and a few examples ("" when none)."""
        if not self.skipped:
            return ""
        total = self.rejected + len(self.spans)
        reasons = ", ".join(f"{count} {_REASON_TEXT[reason]}" for reason, count in sorted(self.skipped.items()))
        text = f"skipped {self.rejected} of {total} spans: {reasons}"
        return f"{text} (e.g. {'; '.join(self.examples)})" if self.examples else text


_REASON_TEXT = {
    "no_model": f"without a GenAI model ({RESPONSE_MODEL} or {REQUEST_MODEL})",
    "aggregate": "agent or workflow spans whose usage sums their inference spans",
    "no_tokens": "with a model but no token count (gen_ai.usage.input_tokens / output_tokens)",
    "invalid": "with values out of range",
}


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def convert_request(request: ExportTraceServiceRequest) -> Conversion:
    """Map every span of an export request; skipped spans are counted, never raised."""
    out = Conversion()
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        caller = resource.get(SERVICE_NAME)
        caller = caller if isinstance(caller, str) else ""
        for scope_spans in resource_spans.scope_spans:
            for otlp_span in scope_spans.spans:
                try:
                    out.spans.append(convert_span(otlp_span, caller))
                except _Skip as skip:
                    out.skipped[skip.reason] += 1
                    if skip.detail and len(out.examples) < _MAX_EXAMPLES:
                        out.examples.append(f"span {otlp_span.span_id.hex() or '?'}: {skip.detail}")
    return out


def convert_span(otlp_span: OTLPSpan, caller: str = "") -> Span:
    """One OTLP span as a tokentrace span; raises ``_Skip`` (with a reason from SKIP_REASONS) otherwise."""
    attrs = _attributes(otlp_span.attributes)
    request_model = _text(attrs, REQUEST_MODEL)
    model = _text(attrs, RESPONSE_MODEL) or request_model
    if not model:
        raise _Skip("no_model")
    operation = _text(attrs, OPERATION)
    if operation in _AGGREGATE_OPERATIONS and not (
        operation == "invoke_agent" and otlp_span.kind == OTLPSpan.SPAN_KIND_CLIENT
    ):
        raise _Skip("aggregate", f"{operation} span (kind {OTLPSpan.SpanKind.Name(otlp_span.kind)})")
    prompt, comp = _count(attrs, INPUT_TOKENS), _count(attrs, OUTPUT_TOKENS)
    cache_read, cache_write = _count(attrs, CACHE_READ_NAMES) or 0, _count(attrs, CACHE_WRITE_NAMES) or 0
    if prompt is None and comp is None and not (cache_read or cache_write):
        raise _Skip("no_tokens", f"model {model!r} but no token count")
    for name, value in (("cache read", cache_read), ("cache write", cache_write)):
        if not 0 <= value <= MAX_TOKENS:
            raise _Skip("invalid", f"{name} tokens must be between 0 and {MAX_TOKENS}, got {value}")
    if (cache_read or cache_write) and (prompt is None or 0 <= prompt < cache_read + cache_write):
        prompt = (prompt or 0) + cache_read + cache_write  # the sender left cached tokens out of input_tokens

    raw_provider = _text(attrs, PROVIDER_NAME) or _text(attrs, SYSTEM)
    provider = PROVIDERS.get(raw_provider.lower(), raw_provider)
    attributes = _kept(attrs)
    if request_model and request_model != model:
        attributes[REQUEST_MODEL] = request_model
    if provider != raw_provider:
        attributes[PROVIDER_NAME] = raw_provider
    if cache_read:
        attributes[CACHE_READ_ATTRIBUTE] = cache_read
    if cache_write:
        attributes[CACHE_WRITE_ATTRIBUTE] = cache_write
    score = _score(attrs, otlp_span.events)
    if score is not None:
        attributes[EVAL_SCORE] = score
    status, error = _status(otlp_span, attrs)
    started_at, ended_at, latency_ms = _times(otlp_span)
    try:
        span = Span(
            trace_id=otlp_span.trace_id.hex(),
            span_id=otlp_span.span_id.hex(),
            parent_span_id=otlp_span.parent_span_id.hex() or None,
            name=otlp_span.name,
            model=model,
            provider=provider,
            prompt_tokens=prompt,
            comp_tokens=comp,
            latency_ms=latency_ms,
            status=status,
            error=error,
            caller=caller,
            started_at=started_at,
            ended_at=ended_at,
            attributes=attributes,
        )
    except ValueError as exc:
        raise _Skip("invalid", str(exc)) from None
    too_long = text_limit_error(span)
    if too_long is not None:
        raise _Skip("invalid", too_long)
    return span


def _value(value: AnyValue) -> AttributeValue | None:
    """A scalar attribute value; arrays, maps, bytes, unset and non-finite doubles are None."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value" and math.isfinite(value.double_value):
        return value.double_value
    return None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for pair in pairs:
        value = _value(pair.value)
        if value is not None:
            out[pair.key] = value
    return out


def _text(attrs: Mapping[str, AttributeValue], key: str) -> str:
    value = attrs.get(key)
    return value if isinstance(value, str) else ""


def _count(attrs: Mapping[str, AttributeValue], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` present, as a whole number (an integral double is accepted)."""
    for key in keys:
        value = attrs.get(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Skip("invalid", f"{key} must be a whole number, got {value!r:.40}")
    return None


def _kept(attrs: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
    """The attributes kept, in order, within the span caps of ``core.limits`` (a few are added after this,
    hence the room left): the rest are dropped, as long strings are, rather than the span skipped."""
    kept: dict[str, AttributeValue] = {}
    chars = 0
    for key, value in attrs.items():
        if (
            key in _CONSUMED
            or key in CONTENT_ATTRIBUTES
            or key in _PER_CALL_IDS
            or key.startswith(_CONTENT_PREFIXES)
            or (isinstance(value, str) and len(value) > MAX_ATTRIBUTE_TEXT)
            or len(key) > MAX_ATTRIBUTE_KEY_CHARS
        ):
            continue
        size = len(key) + (len(value) if isinstance(value, str) else 0)
        if len(kept) >= _KEPT_ATTRIBUTES or chars + size > _KEPT_CHARS:
            continue
        chars += size
        kept[key] = value
    return kept


def _number(value: AttributeValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if -MAX_SCORE <= value <= MAX_SCORE else None


def _score(attrs: Mapping[str, AttributeValue], events: Iterable[OTLPSpan.Event]) -> float | None:
    for key in (SCORE, EVAL_SCORE):
        if key in attrs:
            return _number(attrs[key])
    for event in events:
        if event.name == EVALUATION_EVENT:
            score = _number(_attributes(event.attributes).get(SCORE))
            if score is not None:
                return score
    return None


def _status(otlp_span: OTLPSpan, attrs: Mapping[str, AttributeValue]) -> tuple[Status, str | None]:
    error_type = str(attrs.get(ERROR_TYPE, "") or "")
    if otlp_span.status.code != OTLPStatus.STATUS_CODE_ERROR and not error_type:
        return "ok", None
    message = otlp_span.status.message
    if not error_type or not message:
        for event in otlp_span.events:
            if event.name == "exception":
                exception = _attributes(event.attributes)
                error_type = error_type or _text(exception, "exception.type")
                message = message or _text(exception, "exception.message")
                break
    status: Status = "timeout" if "timeout" in error_type.lower() else "error"
    text = ": ".join(part for part in (error_type, message) if part) or None
    return status, text[:MAX_ERROR_TEXT] if text else None


def _times(otlp_span: OTLPSpan) -> tuple[str | None, str | None, float | None]:
    start, end = otlp_span.start_time_unix_nano, otlp_span.end_time_unix_nano
    if start and end and end < start:
        raise _Skip("invalid", "end time is before start time")
    started_at = format_ms(start // 1_000_000) if start else None
    ended_at = format_ms(end // 1_000_000) if end else None
    latency_ms = (end - start) / 1_000_000 if start and end else None
    return started_at, ended_at, latency_ms
