"""The mergeable aggregate of a set of spans: counts, exact sums and sketches.

Sums that users read as money or counts are integers: cost in nano-dollars, tokens, latency in
microseconds, quality scores in billionths. Integer sums are exact and merge identically in any order,
so the embedded server and any number of distributed workers agree to the last digit.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

import msgspec

from tokentrace.core import native, sketch
from tokentrace.core.sketch import Sketch
from tokentrace.core.span import EVAL_SCORE, Span

__all__ = [
    "LATENCY_BUCKETS_MS",
    "PROMPT_TOKEN_BUCKETS",
    "Aggregate",
    "from_nanos",
    "to_nanos",
]

NANO = 1_000_000_000
#: Upper bounds of the Prometheus latency histogram (``tokentrace_latency_ms_bucket``'s ``le``: 100 ms, 500 ms, 1000 ms, ...); +Inf implied.
LATENCY_BUCKETS_MS: tuple[float, ...] = (100, 500, 1000, 2000, 5000, 10000, 30000, 60000)
#: Upper bounds of the Prometheus prompt-token histogram; +Inf implied.
PROMPT_TOKEN_BUCKETS: tuple[float, ...] = (64, 256, 1024, 4096, 16384, 65536, 262144)
_latency_bucket = partial(bisect_left, LATENCY_BUCKETS_MS)
_prompt_bucket = partial(bisect_left, PROMPT_TOKEN_BUCKETS)
#: From this many spans on, ``add_many`` works field by field; below, span by span (measured break-even).
BULK_FROM = 8


def _zeros(n: int) -> list[int]:
    return [0] * n


#: A new aggregate's bucket counts: ``[0] * n``, which the compiled module (native/src/untrack.rs) leaves
#: untracked by the cycle collector (a list of ints is never part of a cycle; walking two per aggregate made
#: each full collection of what a server counted ~7x slower: bench/gc_pause.py).
_counts: Callable[[int], list[int]] = native.untracked_zeros or _zeros
#: ``add_many`` compiled (tokentrace/core/native.py), or None where this install runs it in Python.
_KERNEL = (
    native.AggregateKernel(LATENCY_BUCKETS_MS, PROMPT_TOKEN_BUCKETS, sketch.MULTIPLIER, sketch.OFFSET)
    if native.AggregateKernel is not None
    else None
)


def to_nanos(value: float) -> int:
    """A float amount (USD, score) as integer billionths, rounded half away from zero."""
    return int(value * NANO + (0.5 if value >= 0 else -0.5))


def from_nanos(value: int) -> float:
    """Integer billionths back to a float, as close as a float gets."""
    return value / NANO


class Aggregate(msgspec.Struct, array_like=True, gc=False):
    """Everything the metrics need about a set of spans, mergeable without loss.

    ``gc=False``: an aggregate holds numbers, lists of ints and sketches, never a reference back to itself,
    so it cannot be part of a cycle; untracked by the collector, each field write costs half as much.
    """

    count: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    cost_nanos: int = 0
    unpriced: int = 0
    prompt_tokens: int = 0
    comp_tokens: int = 0
    total_tokens: int = 0
    latency_count: int = 0
    latency_sum_us: int = 0
    latency: Sketch = msgspec.field(default_factory=Sketch)
    latency_buckets: list[int] = msgspec.field(default_factory=partial(_counts, len(LATENCY_BUCKETS_MS) + 1))
    prompt_buckets: list[int] = msgspec.field(default_factory=partial(_counts, len(PROMPT_TOKEN_BUCKETS) + 1))
    score_count: int = 0
    score_sum_nanos: int = 0
    score: Sketch = msgspec.field(default_factory=Sketch)

    def add(self, span: Span) -> None:
        """Count one span."""
        self.count += 1
        status = span.status
        if status == "ok":
            self.ok += 1
        elif status == "error":
            self.errors += 1
        else:
            self.timeouts += 1
        cost = span.cost_usd
        if cost is None:
            self.unpriced += 1
        else:
            self.cost_nanos += int(cost * NANO + 0.5)
        # Span.__post_init__ made the token counts whole ints (typing.cast would cost a call per field).
        prompt = span.prompt_tokens
        if prompt is not None:
            self.prompt_tokens += prompt  # type: ignore[assignment]
            self.prompt_buckets[_prompt_bucket(prompt)] += 1
        self.comp_tokens += span.comp_tokens or 0  # type: ignore[assignment]
        self.total_tokens += span.total_tokens or 0  # type: ignore[assignment]
        latency = span.latency_ms
        if latency is not None:
            self.latency_count += 1
            self.latency_sum_us += round(latency * 1000)
            self.latency.add(latency)
            self.latency_buckets[_latency_bucket(latency)] += 1
        raw_score = span.attributes.get(EVAL_SCORE)
        if raw_score is not None:
            score = float(raw_score)
            self.score_count += 1
            self.score_sum_nanos += int(score * NANO + (0.5 if score >= 0 else -0.5))
            self.score.add(score)

    def add_many(self, spans: Sequence[Span]) -> None:
        """Count several spans: the same aggregate, field for field, as ``add`` for each in order.

        Hand-optimised for the ingest hot path: each field is gathered in one comprehension, then summed,
        counted or bucketed in bulk (every sum is over ints, so the order of additions is moot). Below
        ``BULK_FROM`` spans the fixed cost of those passes exceeds what they save, so ``add`` does it.
        The compiled kernel, where installed, does all of it for a list unless a span holds a value it leaves
        to this code (then it has changed nothing).
        """
        kernel = _KERNEL
        if kernel is not None and kernel.add_many(self, spans):
            return
        count = len(spans)
        if count < BULK_FROM:
            for span in spans:
                self.add(span)
            return
        self.count += count
        statuses = [s.status for s in spans]
        ok, errors = statuses.count("ok"), statuses.count("error")
        self.ok += ok
        self.errors += errors
        self.timeouts += count - ok - errors
        priced = [int(c * NANO + 0.5) for s in spans if (c := s.cost_usd) is not None]
        self.unpriced += count - len(priced)
        self.cost_nanos += sum(priced)
        # Span.__post_init__ made the token counts whole ints.
        self._add_prompts(cast(list[int], [p for s in spans if (p := s.prompt_tokens) is not None]))
        self.comp_tokens += cast(int, sum([s.comp_tokens or 0 for s in spans]))
        self.total_tokens += cast(int, sum([s.total_tokens or 0 for s in spans]))
        self._add_latencies([v for s in spans if (v := s.latency_ms) is not None])
        self._add_scores([float(score) for s in spans if (score := s.attributes.get(EVAL_SCORE)) is not None])

    def _add_prompts(self, prompts: list[int]) -> None:
        self.prompt_tokens += sum(prompts)
        buckets = self.prompt_buckets
        for index in map(_prompt_bucket, prompts):
            buckets[index] += 1

    def _add_latencies(self, latencies: list[float]) -> None:
        if not latencies:
            return
        self.latency_count += len(latencies)
        self.latency_sum_us += sum([round(v * 1000) for v in latencies])
        self.latency.add_many(latencies)
        buckets = self.latency_buckets
        for index in map(_latency_bucket, latencies):
            buckets[index] += 1

    def _add_scores(self, scores: list[float]) -> None:
        if not scores:
            return
        self.score_count += len(scores)
        self.score_sum_nanos += sum([int(s * NANO + (0.5 if s >= 0 else -0.5)) for s in scores])
        self.score.add_many(scores)

    def merge(self, other: Aggregate) -> None:
        """Add ``other`` into this aggregate."""
        self.count += other.count
        self.ok += other.ok
        self.errors += other.errors
        self.timeouts += other.timeouts
        self.cost_nanos += other.cost_nanos
        self.unpriced += other.unpriced
        self.prompt_tokens += other.prompt_tokens
        self.comp_tokens += other.comp_tokens
        self.total_tokens += other.total_tokens
        self.latency_count += other.latency_count
        self.latency_sum_us += other.latency_sum_us
        self.latency.merge(other.latency)
        for i, n in enumerate(other.latency_buckets):
            self.latency_buckets[i] += n
        for i, n in enumerate(other.prompt_buckets):
            self.prompt_buckets[i] += n
        self.score_count += other.score_count
        self.score_sum_nanos += other.score_sum_nanos
        self.score.merge(other.score)

    def copy(self) -> Aggregate:
        """An independent copy."""
        out = Aggregate()
        out.merge(self)
        return out

    # Derived values, as the API reports them.
    @property
    def cost_usd(self) -> float:
        return from_nanos(self.cost_nanos)

    @property
    def error_rate(self) -> float:
        """Share of spans with status ``error`` (as the shipped Prometheus rules compute it, dashboards/prometheus-rules.yml; timeouts are apart)."""
        return self.errors / self.count if self.count else 0.0

    @property
    def score_avg(self) -> float | None:
        return from_nanos(self.score_sum_nanos) / self.score_count if self.score_count else None

    @property
    def latency_avg_ms(self) -> float | None:
        return self.latency_sum_us / 1000 / self.latency_count if self.latency_count else None
