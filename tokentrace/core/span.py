"""The span: one inference call. One msgspec schema for every transport, the HTTP API and Kafka.

Validation happens while decoding (``__post_init__`` runs for decoded and constructed spans alike), so a
bad span is reported with msgspec's path, e.g. ``prompt_tokens must be a whole number >= 0 - at `$[3]```.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal

import msgspec

from tokentrace.core import native
from tokentrace.core.timefmt import format_ms, normalize_rfc3339, parse_rfc3339_ms

__all__ = [
    "EVAL_SCORE",
    "SLOTS_FOUND",
    "STATUSES",
    "AttributeValue",
    "Span",
    "Status",
    "new_id",
    "span_time_ms",
]

Status = Literal["ok", "error", "timeout"]
STATUSES: tuple[Status, ...] = ("ok", "error", "timeout")
AttributeValue = str | int | float | bool
_MIN_INT64 = -(2**63)
_MAX_UINT64 = 2**64 - 1
#: The attribute whose numeric value is the span's quality score.
EVAL_SCORE = "eval.score"


def new_id() -> str:
    """A new random trace or span id (a UUID 4 string, the form the span format's ids take)."""
    return str(uuid.uuid4())


#: Upper bounds that keep every sum exact and every timestamp printable; far beyond any real call.
MAX_TOKENS = 10**12
MAX_COST_USD = 10**6
MAX_LATENCY_MS = 10**10
MAX_SCORE = 10**6
_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The usual case of ``Span.__post_init__`` compiled (tokentrace/core/native.py), or None.
_check_span = native.check_span
#: The float bounds as ``_check_span`` takes them: an int passed for a float is converted on every call.
_COST_BOUND, _LATENCY_BOUND, _SCORE_BOUND = float(MAX_COST_USD), float(MAX_LATENCY_MS), float(MAX_SCORE)
#: ``Span.stamp`` for a span with a normalised ``started_at``, compiled, or None.
_stamp = native.stamp


def _whole_tokens(value: int | float | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{field} must be a whole number, got {value!r}")
        value = int(value)
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"{field} must be between 0 and {MAX_TOKENS}, got {value!r}")
    return value


def _bounded(value: int | float | None, field: str, high: float) -> None:
    if value is not None and not 0 <= value <= high:
        raise ValueError(f"{field} must be a number between 0 and {high:g}, got {value!r}")


def _no_control_characters(model: str, provider: str, caller: str) -> None:
    for field, text in (("model", model), ("provider", provider), ("caller", caller)):
        if _CONTROL.search(text):
            raise ValueError(f"{field} must not contain control characters, got {text!r}")


def _timestamp(value: str, field: str) -> tuple[str, int]:
    """The normalised timestamp (``value`` itself when it is normalised already) and its epoch ms."""
    try:
        text, millis = normalize_rfc3339(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    if not 0 <= millis <= _LAST_MS:
        raise ValueError(f"{field}: {value!r} is outside 1970-01-01 .. 9999-12-31")
    return text, millis


def _checked(span: Span) -> None:
    """``Span.__post_init__``'s checks in Python (the reference), each taking a fast branch for the usual value
    and the original checking code (and its message) for the rest."""
    model, provider, caller = span.model, span.provider, span.caller
    if not model:
        raise ValueError("model must be a non-empty string")
    if not (model.isprintable() and provider.isprintable() and caller.isprintable()):
        _no_control_characters(model, provider, caller)  # control characters are never printable
    prompt, comp, total = span.prompt_tokens, span.comp_tokens, span.total_tokens
    if type(prompt) is not int or not 0 <= prompt <= MAX_TOKENS:
        prompt = _whole_tokens(prompt, "prompt_tokens")
    if type(comp) is not int or not 0 <= comp <= MAX_TOKENS:
        comp = _whole_tokens(comp, "comp_tokens")
    if type(total) is not int or not 0 <= total <= MAX_TOKENS:
        total = _whole_tokens(total, "total_tokens")
    if prompt is None and comp is None and total is None:
        raise ValueError("at least one token count is required (prompt_tokens, comp_tokens or total_tokens)")
    if total is None:
        total = (prompt or 0) + (comp or 0)
    span.prompt_tokens, span.comp_tokens, span.total_tokens = prompt, comp, total
    cost, latency = span.cost_usd, span.latency_ms
    if cost is not None and not 0 <= cost <= MAX_COST_USD:
        _bounded(cost, "cost_usd", MAX_COST_USD)
    if latency is not None and not 0 <= latency <= MAX_LATENCY_MS:
        _bounded(latency, "latency_ms", MAX_LATENCY_MS)
    started = ended = None
    if span.started_at is not None:
        span.started_at, started = _timestamp(span.started_at, "started_at")
    if span.ended_at is not None:
        span.ended_at, ended = _timestamp(span.ended_at, "ended_at")
    if started is not None and ended is not None:
        if ended < started:
            raise ValueError("ended_at is before started_at")
        if latency is None:
            span.latency_ms = ended - started
            _bounded(span.latency_ms, "latency_ms", MAX_LATENCY_MS)
    if span.attributes:
        for key, value in span.attributes.items():
            if type(value) is int and not _MIN_INT64 <= value <= _MAX_UINT64:
                # The stores and the Kafka wire are MessagePack, whose integers are 64-bit.
                raise ValueError(f"attributes.{key}: integer {value} is outside the 64-bit range")
        score = span.attributes.get(EVAL_SCORE)
        if score is not None and (isinstance(score, (bool, str)) or not -MAX_SCORE <= score <= MAX_SCORE):
            raise ValueError(
                f"attributes.{EVAL_SCORE} must be a number between -{MAX_SCORE} and {MAX_SCORE}, got {score!r}"
            )
    if not span.trace_id:
        span.trace_id = new_id()
    if not span.span_id:
        span.span_id = new_id()


#: ``Span.__post_init__`` as one compiled call (``_check_span``, then ``_checked`` unless it passed), or None.
_compiled_post_init = (
    None
    if native.compiled_post_init is None or _check_span is None
    else native.compiled_post_init(_checked, globals(), MAX_TOKENS, _COST_BOUND, _LATENCY_BOUND, _SCORE_BOUND)
)


class Span(msgspec.Struct, kw_only=True, gc=False):
    """A single inference call.

    Required: ``model`` and at least one of the token counts. ``total_tokens`` is derived when absent,
    ``latency_ms`` is derived from the timestamps when absent, ids are generated when absent, and
    timestamps are normalised to UTC with millisecond precision. ``cost_usd`` of ``None`` means
    "not known yet": the ingest side prices it from the model table, and it stays ``None`` for a model
    the table does not know (never a silent 0).

    ``gc=False``: a span holds strings, numbers and a dict of scalar attributes (the SDK refuses anything
    else), never a reference back to itself, so it cannot be part of a cycle. Untracked, the spans a worker
    decodes no longer trigger collections that walk its heap: ~10 % fewer instructions per span applied
    (bench/apply_instructions.py, bench/RESULTS.md).
    """

    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str | None = None
    name: str = ""
    model: str
    provider: str = ""
    prompt_tokens: int | float | None = None
    comp_tokens: int | float | None = None
    total_tokens: int | float | None = None
    cost_usd: int | float | None = None
    latency_ms: int | float | None = None
    status: Status = "ok"
    error: str | None = None
    caller: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    attributes: dict[str, AttributeValue] = {}

    def __post_init__(self) -> None:
        # The hot path of every decoded span. The compiled check passes the usual span (ids present, ints,
        # ASCII names, normalised timestamps) or declines having changed nothing; then ``_checked`` decides.
        # Where the compiled module is, the class uses ``_compiled_post_init`` instead: the same, one call.
        check = _check_span
        if check is not None and check(self, MAX_TOKENS, _COST_BOUND, _LATENCY_BOUND, _SCORE_BOUND):
            return
        _checked(self)

    if _compiled_post_init is not None:
        __post_init__ = _compiled_post_init  # type: ignore[assignment,misc]

    @property
    def score(self) -> float | None:
        """The ``eval.score`` attribute as a float, or None when the span is not scored."""
        value = self.attributes.get(EVAL_SCORE)
        return None if value is None else float(value)

    def stamp(self, arrival_ms: int) -> int:
        """Give a span without timestamps its arrival time (it counts at the time it arrived); fill
        ``ended_at`` from the start and the latency. Returns the time the span counts at (``span_time_ms``)."""
        compiled = _stamp
        if compiled is not None:
            start = compiled(self)  # None, having changed nothing, unless started_at is normalised
            if start is not None:
                return start
        if self.started_at is None:
            if self.ended_at is not None and self.latency_ms is not None:
                start = max(0, parse_rfc3339_ms(self.ended_at) - round(self.latency_ms))
            else:
                start = arrival_ms
            self.started_at = format_ms(start)
            if not 0 <= start <= _LAST_MS:  # what the text reads as, or its ValueError, as before
                start = parse_rfc3339_ms(self.started_at)
        else:
            start = parse_rfc3339_ms(self.started_at)
        if self.ended_at is None:
            self.ended_at = format_ms(min(_LAST_MS, start + round(self.latency_ms or 0)))
        return start


#: The compiled code reads a span's fields from their slots, found here once on a sample (native/src/slots.rs).
SLOTS_FOUND = native.register_span is not None and native.register_span(Span(model="m", prompt_tokens=1))


def span_time_ms(span: Span) -> int:
    """The event time a span counts at: its ``started_at`` (call ``Span.stamp`` first)."""
    if span.started_at is None:
        raise ValueError("span has no started_at; stamp it with its arrival time first")
    return parse_rfc3339_ms(span.started_at)
