"""``/metrics/prometheus``: the aggregates as Prometheus families, built per scrape from a snapshot.

A custom collector turns the store's lifetime aggregates into metric families, so there is no second set
of global counters to keep in step and no stale label set (the prometheus-client ``Collector`` pattern).
Counters are lifetime totals (retired buckets included), so they never go down. Label sets are the
series (model, provider, caller), which the store already bounds (``LabelCaps`` on the way in, the buckets'
series cap for spans the workers take straight from Kafka). The buckets' cap is per bucket and partition, so
the union over a month of buckets can still be large: the exposition itself keeps the first
``aggregation.max_series`` series of the lifetime totals (retired totals first, then buckets oldest first, so
a series keeps its place as new ones arrive) and sums the rest into the ``__overflow__`` series (``cap_series``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from tokentrace.alerting.service import AlertService
from tokentrace.api.connections import CLOSE_REASONS, GUARD, ConnectionGuard
from tokentrace.api.context import CONTEXT
from tokentrace.api.cycles import cycles_wait
from tokentrace.core.aggregate import LATENCY_BUCKETS_MS, PROMPT_TOKEN_BUCKETS, Aggregate, from_nanos
from tokentrace.core.buckets import OVERFLOW_SERIES, SEP, SERIES, Projection
from tokentrace.core.labels import LABELS, LabelCaps
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import LifetimeParts

__all__ = [
    "CONNECTIONS_COUNTER",
    "FOLDED_COUNTER",
    "QUALITY_WINDOW_MS",
    "ExpositionSnapshot",
    "cap_series",
    "handle_prometheus",
    "render",
]

#: Family of spans whose model, provider or caller was folded into ``__overflow__`` (``..._total{label}``).
FOLDED_COUNTER = "tokentrace_folded_labels"
#: Family of connections refused (``too_many``) or cut (``header_timeout``) by the guard.
CONNECTIONS_COUNTER = "tokentrace_connections_closed"
#: ``tokentrace_quality_score`` is the average eval score over this trailing window.
QUALITY_WINDOW_MS = 5 * 60_000


@dataclass
class ExpositionSnapshot:
    """Everything one scrape shows, gathered from the store before rendering."""

    series: Projection
    quality_by_model: Projection
    #: Series shown apart at most (``aggregation.max_series``); the rest are summed into ``OVERFLOW_SERIES``.
    max_series: int = 10_000
    alert_firings: Mapping[tuple[str, str], int] = field(default_factory=dict)
    rejected: Mapping[str, int] = field(default_factory=dict)
    unknown_models: Mapping[str, int] = field(default_factory=dict)
    extra: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]] = field(default_factory=dict)
    extra_gauges: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]] = field(default_factory=dict)


def _cumulative(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        out.append((_le(bound), running))
    running += counts[-1]
    out.append(("+Inf", running))
    return out


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def cap_series(series: Projection, max_series: int) -> Projection:
    """``series`` with at most ``max_series`` series apart (``OVERFLOW_SERIES`` aside): the first ones in its
    order, the rest summed into ``OVERFLOW_SERIES``. Totals are unchanged; ``series`` itself is not."""
    kept = [key for key in series if key != OVERFLOW_SERIES]
    if len(kept) <= max_series:
        return series
    capped = {key: series[key] for key in kept[:max_series]}
    overflow = series[OVERFLOW_SERIES].copy() if OVERFLOW_SERIES in series else Aggregate()
    for key in kept[max_series:]:
        overflow.merge(series[key])
    capped[OVERFLOW_SERIES] = overflow
    return capped


class _SnapshotCollector:
    def __init__(self, snapshot: ExpositionSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        cost = CounterMetricFamily("tokentrace_cost", "Total cost in USD.", labels=["model", "provider", "caller"])
        spans = CounterMetricFamily("tokentrace_spans", "Total spans recorded.", labels=["status", "model", "provider"])
        tokens = CounterMetricFamily(
            "tokentrace_tokens", "Total tokens, by type (prompt or completion).", labels=["model", "provider", "type"]
        )
        unpriced = CounterMetricFamily(
            "tokentrace_unpriced_spans",
            "Spans whose cost is unknown (model not in the price table and no cost_usd sent).",
            labels=["model", "provider"],
        )
        latency = HistogramMetricFamily(
            "tokentrace_latency_ms", "Inference latency in milliseconds.", labels=["model", "provider"]
        )
        prompt = HistogramMetricFamily(
            "tokentrace_prompt_tokens", "Prompt tokens per inference call.", labels=["model", "provider"]
        )
        by_model_provider: dict[tuple[str, str], Aggregate] = {}
        for key, aggregate in sorted(cap_series(snap.series, snap.max_series).items()):
            model, provider, caller = key.split(SEP)
            cost.add_metric([model, provider, caller], from_nanos(aggregate.cost_nanos))
            mine = by_model_provider.get((model, provider))
            if mine is None:
                by_model_provider[(model, provider)] = aggregate.copy()
            else:
                mine.merge(aggregate)
        for (model, provider), a in sorted(by_model_provider.items()):
            for status, count in (("ok", a.ok), ("error", a.errors), ("timeout", a.timeouts)):
                if count:
                    spans.add_metric([status, model, provider], count)
            tokens.add_metric([model, provider, "prompt"], a.prompt_tokens)
            tokens.add_metric([model, provider, "completion"], a.comp_tokens)
            if a.unpriced:
                unpriced.add_metric([model, provider], a.unpriced)
            if a.latency_count:
                latency.add_metric(
                    [model, provider], _cumulative(a.latency_buckets, LATENCY_BUCKETS_MS), a.latency_sum_us / 1000
                )
            prompt.add_metric([model, provider], _cumulative(a.prompt_buckets, PROMPT_TOKEN_BUCKETS), a.prompt_tokens)
        yield from (cost, spans, tokens, unpriced, latency, prompt)

        quality = GaugeMetricFamily(
            "tokentrace_quality_score",
            "Average eval.score of the spans that started in the last 5 minutes.",
            labels=["model"],
        )
        for model, a in sorted(snap.quality_by_model.items()):
            if a.score_avg is not None:
                quality.add_metric([model], a.score_avg)
        yield quality

        firings = CounterMetricFamily(
            "tokentrace_alert_firings", "Times an alert rule started firing.", labels=["alert", "level"]
        )
        for (alert, level), count in sorted(snap.alert_firings.items()):
            firings.add_metric([alert, level], count)
        yield firings

        rejected = CounterMetricFamily(
            "tokentrace_ingest_rejections", "Ingest requests rejected, by reason.", labels=["reason"]
        )
        for reason, count in sorted(snap.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected

        unknown = CounterMetricFamily(
            "tokentrace_price_lookup_misses", "Price lookups for models missing from the price table.", labels=["model"]
        )
        for model, count in sorted(snap.unknown_models.items()):
            unknown.add_metric([model], count)
        yield unknown

        for kind, extra in ((CounterMetricFamily, snap.extra), (GaugeMetricFamily, snap.extra_gauges)):
            for name, samples in sorted(extra.items()):
                labels = sorted({k for sample in samples for k, _ in sample})
                family = kind(name, f"{name.replace('_', ' ')}.", labels=labels)
                for sample, value in sorted(samples.items()):
                    values = dict(sample)
                    family.add_metric([values.get(label, "") for label in labels], value)
                yield family


def render(snapshot: ExpositionSnapshot) -> bytes:
    """The text exposition (format 0.0.4) of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


def _alert_firings(alerts: AlertService | None) -> dict[tuple[str, str], int]:
    """Firings per (rule, level), with 0 for every rule that has not fired, so that Prometheus sees the
    first firing as an increase rather than a series appearing at 1."""
    if alerts is None:
        return {}
    counts = {(rule["name"], rule["level"]): 0 for rule in alerts.list_alerts()}
    counts.update(alerts.firing_counts())
    return counts


def _sum_and_render(parts: LifetimeParts, quality: LifetimeParts, snapshot: ExpositionSnapshot) -> bytes:
    with cycles_wait():  # 10k series: full collections of 50-140 ms meanwhile, walking what this builds
        snapshot.series = parts.total()
        snapshot.quality_by_model = quality.total()
        return render(snapshot)


def _closed(guard: ConnectionGuard | None) -> dict[tuple[tuple[str, str], ...], float]:
    """Connections the guard refused or cut, by reason, 0 for reasons that never happened."""
    closed = guard.closed if guard is not None else {}
    return {(("reason", reason),): float(closed.get(reason, 0)) for reason in CLOSE_REASONS}


def _folded(labels: LabelCaps, capped: int) -> dict[tuple[tuple[str, str], ...], float]:
    """Spans whose label was folded into ``__overflow__``, by label, 0 for labels never folded: this process's
    ``LabelCaps`` folds, plus (``series``) the ``capped`` spans the stored buckets' series cap counted in the
    overflow series (``Timeline.overflowed_series``: spans that reached the workers straight from Kafka)."""
    folded: dict[tuple[tuple[str, str], ...], float] = {
        (("label", label),): float(labels.folded[label]) for label in LABELS
    }
    folded[(("label", "series"),)] = float(labels.folded["series"] + capped)
    return folded


async def handle_prometheus(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    store = ctx.store
    if ctx.alerts is not None:
        await ctx.alerts.refresh()
    now = now_ms()
    bucket = store.settings.bucket_ms
    end = now - now % bucket + bucket
    parts = await store.lifetime_parts(SERIES)
    quality = await store.query_parts(end - max(QUALITY_WINDOW_MS, bucket), end, "model", {})
    snapshot = ExpositionSnapshot(
        series={},  # summed from ``parts`` in the thread
        quality_by_model={},  # summed from ``quality`` in the thread
        alert_firings=_alert_firings(ctx.alerts),
        rejected=dict(ctx.rejected),
        unknown_models=dict(getattr(ctx.pricer, "unknown_models", {}) or {}),
        # Copies: the loop keeps updating these while the exposition is rendered in a thread.
        extra={name: dict(samples) for name, samples in ctx.extra_counters.items()}
        | {FOLDED_COUNTER: _folded(ctx.labels, store.timeline.overflowed_series())}
        | {CONNECTIONS_COUNTER: _closed(request.app.get(GUARD))},
        extra_gauges={name: dict(samples) for name, samples in ctx.extra_gauges.items()},
        max_series=ctx.config.aggregation.max_series,
    )
    # Gathering the parts holds the loop ~2 ms per 10k series written since the last scrape; decoding and summing
    # them (seconds for 10k series) and rendering run in a thread: the parts are projections and frozen bytes
    # the store never changes again, and everything else in the snapshot is a copy.
    body = await asyncio.to_thread(_sum_and_render, parts, quality, snapshot)
    parts.install()  # the settled days and hours summed in the thread are memoised for the next scrape
    await asyncio.sleep(0)  # one part per turn of the loop
    quality.install()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
