"""The metric names an alert rule may watch.

The names a reader must understand are :data:`READER_METRICS`. The MIST-era names (README, "Seed 001 (MIST) compatibility") are accepted as
aliases and map onto them (``latency_p99_ms`` is ``latency_p99``); ``total_tokens_in`` and
``total_tokens_out`` are prompt and completion token sums in the window.
"""

from __future__ import annotations

__all__ = ["ALIASES", "COUNT_METRICS", "METRICS", "RATIO_METRICS", "READER_METRICS", "canonical_metric"]

#: Metrics a reader is asked for.
READER_METRICS: frozenset[str] = frozenset(
    {
        "total_cost",
        "cost_per_call",
        "latency_p50",
        "latency_p95",
        "latency_p99",
        "error_rate",
        "error_count",
        "span_count",
        "total_tokens",
        "total_tokens_in",
        "total_tokens_out",
        "quality_avg",
        "quality_p10",
    }
)

#: MIST-era metric names and what they mean here.
ALIASES: dict[str, str] = {
    "total_spans": "span_count",
    "latency_p50_ms": "latency_p50",
    "latency_p99_ms": "latency_p99",
    "total_cost_usd": "total_cost",
}

#: Every name a rule may use.
METRICS: frozenset[str] = READER_METRICS | frozenset(ALIASES)

#: Sums and counts: 0 (not "no data") when the window holds no span.
COUNT_METRICS: frozenset[str] = frozenset(
    {"total_cost", "error_count", "span_count", "total_tokens", "total_tokens_in", "total_tokens_out"}
)

#: Metrics that are fractions in [0, 1].
RATIO_METRICS: frozenset[str] = frozenset({"error_rate"})


def canonical_metric(name: str) -> str:
    """The reader metric for a rule's metric name (aliases resolved); KeyError if unknown."""
    if name in READER_METRICS:
        return name
    return ALIASES[name]
