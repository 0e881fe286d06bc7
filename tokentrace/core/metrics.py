"""Metric definitions: from a merged aggregate to the bodies and values users read.

One table of scalar metrics serves ``GET /metrics/{name}`` for scalar names, the MIST-era names (README, "Seed 001 (MIST) compatibility") and alert
rules, so a number means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokentrace.core.aggregate import Aggregate, from_nanos
from tokentrace.core.buckets import Projection
from tokentrace.core.timefmt import format_ms, parse_duration

__all__ = [
    "GROUP_METRICS",
    "SCALAR_METRICS",
    "full_body",
    "group_body",
    "metric_names",
    "parse_window_ms",
    "point_body",
    "scalar_value",
]


def parse_window_ms(text: str) -> int:
    """A ``window`` parameter in milliseconds (``1h``, ``7d``, ``90m``, ``1h30m``); ValueError if invalid."""
    return round(parse_duration(text) * 1000)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _usd(nanos: int) -> float:
    return round(from_nanos(nanos), 9)


def _per_call(a: Aggregate) -> float | None:
    priced = a.count - a.unpriced
    return round(from_nanos(a.cost_nanos) / priced, 9) if priced else None


def _score(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def cost_fields(a: Aggregate) -> dict[str, Any]:
    return {"total_usd": _usd(a.cost_nanos), "per_call_usd": _per_call(a), "unpriced_span_count": a.unpriced}


def latency_fields(a: Aggregate) -> dict[str, Any]:
    sketch = a.latency
    return {
        "p50_ms": _ms(sketch.quantile(0.50)),
        "p95_ms": _ms(sketch.quantile(0.95)),
        "p99_ms": _ms(sketch.quantile(0.99)),
        "avg_ms": _ms(a.latency_avg_ms),
    }


def token_fields(a: Aggregate) -> dict[str, Any]:
    return {"prompt_total": a.prompt_tokens, "completion_total": a.comp_tokens, "total": a.total_tokens}


def error_fields(a: Aggregate) -> dict[str, Any]:
    return {"rate": round(a.error_rate, 6), "count": a.errors, "timeout_count": a.timeouts}


def quality_fields(a: Aggregate) -> dict[str, Any]:
    return {
        "score_avg": _score(a.score_avg),
        "score_p10": _score(a.score.quantile(0.10)),
        "scored_span_count": a.score_count,
    }


def full_body(a: Aggregate, cost_by_model: dict[str, float | None]) -> dict[str, Any]:
    """The body of ``GET /metrics`` for one group (without ``window``)."""
    return {
        "span_count": a.count,
        "cost": {**cost_fields(a), "by_model": cost_by_model},
        "tokens": token_fields(a),
        "latency": latency_fields(a),
        "errors": error_fields(a),
        "quality": quality_fields(a),
    }


def cost_by_model(by_model: Projection) -> dict[str, float | None]:
    """Cost per model; ``None`` for a model none of whose spans could be priced (never a silent 0)."""
    return {model: None if a.unpriced == a.count else _usd(a.cost_nanos) for model, a in sorted(by_model.items())}


#: Named metrics with an object body: name -> fields of one group.
GROUP_METRICS: dict[str, Callable[[Aggregate], dict[str, Any]]] = {
    "cost": cost_fields,
    "latency": latency_fields,
    "tokens": token_fields,
    "quality": quality_fields,
    "errors": error_fields,
    "error_rate": error_fields,
}


def group_body(name: str, a: Aggregate) -> dict[str, Any]:
    """The body of ``GET /metrics/{name}`` for a group metric, for one group (without ``window``)."""
    return {**GROUP_METRICS[name](a), "span_count": a.count}


def _quantile(sketch_of: Callable[[Aggregate], Any], q: float) -> Callable[[Aggregate], float | None]:
    return lambda a: _ms(sketch_of(a).quantile(q))


#: Scalar metrics: name -> value of one aggregate (None when there is no data to say it).
SCALAR_METRICS: dict[str, Callable[[Aggregate], float | int | None]] = {
    "span_count": lambda a: a.count,
    "total_spans": lambda a: a.count,
    "total_cost": lambda a: _usd(a.cost_nanos),
    "total_cost_usd": lambda a: _usd(a.cost_nanos),
    "cost_per_call": _per_call,
    "latency_p50": _quantile(lambda a: a.latency, 0.50),
    "latency_p95": _quantile(lambda a: a.latency, 0.95),
    "latency_p99": _quantile(lambda a: a.latency, 0.99),
    "latency_p50_ms": _quantile(lambda a: a.latency, 0.50),
    "latency_p95_ms": _quantile(lambda a: a.latency, 0.95),
    "latency_p99_ms": _quantile(lambda a: a.latency, 0.99),
    "latency_avg_ms": lambda a: _ms(a.latency_avg_ms),
    "error_rate": lambda a: round(a.error_rate, 6),
    "error_count": lambda a: a.errors,
    "timeout_count": lambda a: a.timeouts,
    "total_tokens": lambda a: a.total_tokens,
    "total_tokens_in": lambda a: a.prompt_tokens,
    "total_tokens_out": lambda a: a.comp_tokens,
    "quality_avg": lambda a: _score(a.score_avg),
    "quality_p10": lambda a: _score(a.score.quantile(0.10)),
    "unpriced_span_count": lambda a: a.unpriced,
}


def scalar_value(name: str, a: Aggregate) -> float | int | None:
    """Value of a scalar metric (``error_rate`` as a scalar is the rate). KeyError if unknown."""
    return SCALAR_METRICS[name](a)


def metric_names() -> list[str]:
    """Every name ``GET /metrics/{name}`` answers."""
    return sorted(set(GROUP_METRICS) | set(SCALAR_METRICS))


def point_body(start_ms: int, a: Aggregate) -> dict[str, Any]:
    """One interval of ``GET /metrics/series``: the window fields of ``/metrics``, cut to what a chart plots.

    An empty interval says so plainly: zero counts and cost, ``null`` quantiles and averages (a gap, not 0).
    """
    sketch = a.latency
    return {
        "start": format_ms(start_ms),
        "span_count": a.count,
        "cost_usd": _usd(a.cost_nanos),
        "unpriced_span_count": a.unpriced,
        "tokens": token_fields(a),
        "latency": {
            "p50_ms": _ms(sketch.quantile(0.50)),
            "p95_ms": _ms(sketch.quantile(0.95)),
            "p99_ms": _ms(sketch.quantile(0.99)),
        },
        "errors": {"count": a.errors, "rate": round(a.error_rate, 6)},
        "quality": {"score_avg": _score(a.score_avg), "score_p10": _score(a.score.quantile(0.10))},
    }
