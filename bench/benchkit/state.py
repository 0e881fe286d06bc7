"""A big embedded state built fast: 30 days of per-bucket aggregates of synthetic spans, and its snapshot.

Building a 10M-span state span by span (~50 µs a span) would take most of ten minutes, so ``build_timeline``
builds it the way a restart restores it: per-bucket aggregates. A pool of distinct minute buckets is filled by
adding real spans (``BucketState.add`` of ``synthetic_span``: 5 models x 3 providers x 4 callers = 60 series,
one grouped attribute ``workflow`` with 6 values, errors, timeouts, eval scores, latencies); hour buckets are
merges of 60 of them. Every bucket of the window gets its own copy (a msgpack round trip, so nothing is
shared): minute buckets for the fine retention (48h), hour buckets before it, as ``Timeline.compact`` leaves
them. The spans the pool leaves short of exactly the total are added with ``Timeline.add`` at random times.
``write_snapshot`` puts it on disk as an ``EmbeddedStore`` snapshot, with the memos a running server computes
in its warm-up task, for a real ``tokentrace serve`` to load (bench/metrics_query.py, bench/console.py).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import msgspec

from tokentrace.api.embedded import embedded_settings
from tokentrace.api.stores.embedded import EmbeddedStore
from tokentrace.config import Config
from tokentrace.core.buckets import BucketState, Caps
from tokentrace.core.span import Span, span_time_ms
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, Timeline, TimelineSnapshot

__all__ = [
    "CALLERS",
    "MODELS",
    "PROVIDERS",
    "WORKFLOWS",
    "build_timeline",
    "hour_blobs_of",
    "minute_states",
    "synthetic_span",
    "write_snapshot",
]

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022", "gemini-1.5-flash"]
PROVIDERS = ["openai", "anthropic", "bedrock"]
CALLERS = ["summarizer-service", "support-bot", "search-api", "agent-runner"]
WORKFLOWS = ["document-summary", "support-chat", "query-rewrite", "research-agent", "extract", "classify"]


def synthetic_span(rng: random.Random, at_ms: int) -> Span:
    """One call: a random series and workflow, lognormal tokens and latency, 2% errors, 1% timeouts."""
    prompt, comp = int(rng.lognormvariate(6.5, 0.8)), int(rng.lognormvariate(4.8, 0.7))
    roll = rng.random()
    status = "timeout" if roll < 0.01 else "error" if roll < 0.03 else "ok"
    attributes: dict[str, str | int | float | bool] = {"workflow": rng.choice(WORKFLOWS)}
    if status == "ok" and rng.random() < 0.6:
        attributes["eval.score"] = round(rng.betavariate(8, 2), 3)
    return Span(
        model=rng.choice(MODELS),
        provider=rng.choice(PROVIDERS),
        caller=rng.choice(CALLERS),
        prompt_tokens=prompt,
        comp_tokens=comp,
        cost_usd=(prompt * 2.5 + comp * 10) / 1e6,
        latency_ms=round(rng.lognormvariate(6.6, 0.5), 1),
        status=status,  # type: ignore[arg-type]
        started_at=format_ms(at_ms),
        attributes=attributes,
    )


def minute_states(rng: random.Random, per_bucket: int, pool: int, at_ms: int, caps: Caps) -> list[BucketState]:
    """``pool`` distinct minute buckets of ``per_bucket`` synthetic spans each."""
    states: list[BucketState] = []
    for _ in range(pool):
        state = BucketState()
        for _ in range(per_bucket):
            state.add(synthetic_span(rng, at_ms), caps)
        states.append(state)
    return states


def hour_blobs_of(minute_pool: list[BucketState]) -> list[bytes]:
    """As many encoded hour buckets as minutes in the pool, each the merge of 60 of them (as compaction makes)."""
    pool = len(minute_pool)
    blobs = []
    for h in range(pool):
        hour = BucketState()
        for m in range(60):
            hour.merge(minute_pool[(h * 7 + m) % pool])
        blobs.append(msgspec.msgpack.encode(hour))
    return blobs


def build_timeline(total_spans: int, pool: int, seed: int) -> tuple[Timeline, dict[str, float]]:
    """A Timeline holding exactly ``total_spans`` spans spread evenly over the retention window."""
    rng = random.Random(seed)
    config = Config()
    settings = embedded_settings(config).timeline
    timeline = Timeline(settings)
    now = now_ms()
    # Retention as it will be in a quarter of an hour, so no bucket retires while the benchmark runs.
    oldest = timeline.oldest_allowed_ms(now + 15 * MINUTE_MS)
    current = now - now % MINUTE_MS
    minutes = (current - oldest) // MINUTE_MS + 1
    per_minute = total_spans // minutes
    fine_cutoff = now - settings.fine_retention_ms
    fine_from = fine_cutoff - fine_cutoff % HOUR_MS  # compact() folds every minute before this hour
    timings: dict[str, float] = {}

    began = time.perf_counter()
    minute_pool = minute_states(rng, per_minute, pool, now, settings.caps)
    minute_blobs = [msgspec.msgpack.encode(state) for state in minute_pool]
    timings["minute pool"] = time.perf_counter() - began

    began = time.perf_counter()
    hour_blobs = hour_blobs_of(minute_pool)
    timings["hour pool"] = time.perf_counter() - began

    began = time.perf_counter()
    decode = msgspec.msgpack.Decoder(BucketState).decode
    fine: dict[int, BucketState] = {}
    coarse: dict[int, BucketState] = {}
    placed = 0
    start = oldest
    index = 0
    while start <= current:
        if start < fine_from:
            coarse[start] = decode(hour_blobs[index % pool])
            placed += 60 * per_minute
            start += HOUR_MS
        else:
            fine[start] = decode(minute_blobs[index % pool])
            placed += per_minute
            start += MINUTE_MS
        index += 1
    timeline.restore(TimelineSnapshot(fine=fine, coarse=coarse, retired=BucketState()))
    timings["copies"] = time.perf_counter() - began

    began = time.perf_counter()
    rest = total_spans - placed
    for _ in range(rest):
        span = synthetic_span(rng, rng.randrange(oldest, now))
        timeline.add(span, span_time_ms(span))
    timings["top-up"] = time.perf_counter() - began
    timings.update(fine_buckets=len(fine), coarse_buckets=len(coarse), per_minute=per_minute, top_up=rest)
    return timeline, timings


async def write_snapshot(data_dir: Path, timeline: Timeline, spans: int) -> None:
    """Persist ``timeline`` as the store's snapshot (what ``close`` writes)."""
    store = EmbeddedStore(data_dir, embedded_settings(Config()))
    await store.open()
    store.timeline.restore(timeline.snapshot())
    store.timeline.warm_memos()  # what the server's warm-up task has done a minute after it started
    store.span_total = spans
    await store.close()
