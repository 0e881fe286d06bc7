"""Build ``Span`` objects on the hot path without running ``Span.__post_init__`` a second time.

``Span(...)`` validates and normalises every field, re-parses its timestamps and generates its ids: about
15 µs on a slow core. The SDK already holds normalised values (ids from ``ids.new_id``, timestamps from
``clock.stamp``), so it validates the caller's values once with the same rules (``check_*`` below) and then
fills a copy of a template span. The result is the span ``Span(**fields)`` would give; the tests check
that with generated inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from tokentrace.core.span import EVAL_SCORE, STATUSES, AttributeValue, Span, Status
from tokentrace.core.timefmt import parse_rfc3339_ms

__all__ = [
    "check_attributes",
    "check_model",
    "check_number",
    "check_status",
    "check_text",
    "check_tokens",
    "make_span",
    "new_span",
]

_TEMPLATE = Span(trace_id="-", span_id="-", model="-", prompt_tokens=0)
#: A copy of the template span, to fill field by field (``__post_init__`` does not run). Fields left at the
#: template's values: ``parent_span_id``/``error``/``cost_usd``/``latency_ms``/``ended_at`` ``None``,
#: ``status`` ``"ok"``, ``provider``/``caller`` ``""``; ``attributes`` must always be set (the template's
#: dict is shared). The bound method itself, not a function calling it: one frame less per span.
new_span: Callable[[], Span] = _TEMPLATE.__copy__  # type: ignore[attr-defined]  # msgspec: no __post_init__
_ATTRIBUTE_TYPES = (str, int, float, bool)


def check_model(model: object) -> str:
    """A model name must be a non-empty string."""
    if type(model) is str and model:
        return model
    raise ValueError(f"model must be a non-empty string, got {model!r}")


def check_text(value: object, field: str) -> str:
    """``name``, ``provider``, ``caller``, ``error``: a string."""
    if type(value) is str:
        return value
    raise TypeError(f"{field} must be a string, got {type(value).__name__}")


def check_tokens(value: object, field: str) -> int | None:
    """A token count: ``None`` or a whole number >= 0 (a whole float becomes an int)."""
    if value is None or (type(value) is int and value >= 0):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a whole number, got {type(value).__name__}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{field} must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{field} must be >= 0, got {value!r}")
    return int(value)


def check_number(value: object, field: str) -> float | int | None:
    """``cost_usd`` / ``latency_ms``: ``None`` or a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")
    return value


def check_status(status: object) -> Status:
    """One of ``ok``, ``error``, ``timeout``."""
    if status in STATUSES:
        return status
    raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")


def check_attributes(attributes: Mapping[str, Any] | None) -> dict[str, AttributeValue]:
    """A fresh dict of str keys to str/int/float/bool values; ``eval.score`` must be a finite number."""
    if not attributes:
        return {}
    checked = dict(attributes)
    for key, value in checked.items():
        if type(key) is not str:
            raise TypeError(f"attribute keys must be strings, got {key!r}")
        if not isinstance(value, _ATTRIBUTE_TYPES):
            raise TypeError(f"attribute {key!r} must be a str, int, float or bool, got {type(value).__name__}")
    score = checked.get(EVAL_SCORE)
    if score is not None and (isinstance(score, bool | str) or not math.isfinite(score)):
        raise ValueError(f"attributes.{EVAL_SCORE} must be a finite number, got {score!r}")
    return checked


def make_span(
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    name: str,
    model: str,
    provider: str,
    prompt_tokens: int | None,
    comp_tokens: int | None,
    total_tokens: int | None,
    cost_usd: float | int | None,
    latency_ms: float | int | None,
    status: Status,
    error: str | None,
    caller: str,
    started_at: str | None,
    ended_at: str | None,
    attributes: dict[str, AttributeValue],
) -> Span:
    """A span from values already checked with the ``check_*`` functions and normalised timestamps.

    Derives ``total_tokens``, and ``latency_ms`` when it is ``None`` and both timestamps are given, as
    ``Span`` does; raises ValueError when no token count is given. The caller guarantees
    ``started_at <= ended_at`` (only checked on the derivation path).
    """
    if latency_ms is None and started_at is not None and ended_at is not None:
        latency_ms = parse_rfc3339_ms(ended_at) - parse_rfc3339_ms(started_at)
        if latency_ms < 0:
            raise ValueError("ended_at is before started_at")
    if total_tokens is None:
        if prompt_tokens is None and comp_tokens is None:
            raise ValueError("at least one token count is required (prompt_tokens, comp_tokens or total_tokens)")
        total_tokens = (prompt_tokens or 0) + (comp_tokens or 0)
    span = new_span()
    span.trace_id = trace_id
    span.span_id = span_id
    span.parent_span_id = parent_span_id
    span.name = name
    span.model = model
    span.provider = provider
    span.prompt_tokens = prompt_tokens
    span.comp_tokens = comp_tokens
    span.total_tokens = total_tokens
    span.cost_usd = cost_usd
    span.latency_ms = latency_ms
    span.status = status
    span.error = error
    span.caller = caller
    span.started_at = started_at
    span.ended_at = ended_at
    span.attributes = attributes
    return span
