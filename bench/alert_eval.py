"""Benchmark: one alert evaluation round over 1,000 rules, against the default 15s interval.

Readers over the real aggregation ``Timeline`` filled with a synthetic day of traffic: the server's own
``TimelineReader`` (one series query per window, filters merged in memory, cached until the timeline
changes), one sharing the merged aggregate between
metrics of the same (window, filter), one reading each window grouped by series and filtering in memory;
and a constant reader that isolates the engine's own cost. Between rounds the clock moves 15s and new spans arrive, so rollup memos for
the current hour are invalidated as they are in production.

    .venv/bin/python bench/alert_eval.py [--rules 1000] [--spans 100000] [--rounds 20] [--append-results]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from tokentrace.core.aggregate import Aggregate
from tokentrace.core.alerts import METRICS, AlertRule, MetricReader, MetricReading, RuleState, evaluate
from tokentrace.core.buckets import BUILTIN_DIMENSIONS, SEP, SERIES, Projection
from tokentrace.core.metrics import scalar_value
from tokentrace.core.span import Span
from tokentrace.core.timeline import Timeline, total
from tokentrace.core.timeline_reader import TimelineReader

INTERVAL_S = 15.0
MODELS = {
    "gpt-4o": "openai",
    "gpt-4o-mini": "openai",
    "claude-3-5-sonnet-20241022": "anthropic",
    "claude-3-5-haiku-20241022": "anthropic",
    "llama-3.1-70b": "bedrock",
    "mistral-large": "bedrock",
}
CALLERS = [f"service-{i}" for i in range(10)]
TIERS = ["gold", "silver", "bronze"]
WORKFLOWS = ["summary", "chat", "extract", "classify", "agent"]
WINDOWS = ["5m", "15m", "30m", "1h", "6h", "24h"]


def synthetic_span(rng: random.Random, at_ms: int) -> Span:
    model = rng.choice(list(MODELS))
    prompt, comp = rng.randint(50, 4000), rng.randint(10, 800)
    return Span(
        model=model,
        provider=MODELS[model],
        caller=rng.choice(CALLERS),
        prompt_tokens=prompt,
        comp_tokens=comp,
        cost_usd=(prompt * 2.5 + comp * 10) / 1e6,
        latency_ms=rng.lognormvariate(6.5, 0.6),
        status="error" if rng.random() < 0.02 else "ok",
        attributes={"tier": rng.choice(TIERS), "workflow": rng.choice(WORKFLOWS), "eval.score": rng.random()},
    )


class SharingReader:
    """Like the server's reader, but keeps the merged aggregate per (window, filter) for the current
    ``now_ms``, so rules on different metrics of the same spans cost one query."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.queries = 0
        self._now = -1
        self._cache: dict[tuple[int, int, tuple[tuple[str, str], ...]], Aggregate] = {}

    def read(self, metric: str, window_s: float, filter: Mapping[str, str], now_ms: int) -> MetricReading:
        tl = self.timeline
        start, end = tl.window_start(now_ms, round(window_s * 1000)), tl.window_end(now_ms)
        key = (start, end, tuple(sorted(filter.items())))
        if now_ms != self._now:
            self._now, self._cache = now_ms, {}
        aggregate = self._cache.get(key)
        if aggregate is None:
            self.queries += 1
            aggregate = self._cache[key] = total(tl.query(start, end, None, filter))
        value = scalar_value(metric, aggregate)
        return MetricReading(value=None if value is None else float(value), span_count=aggregate.count)


class SeriesReader:
    """Reads each window once per round grouped by series (or by the filter's attribute key) and filters
    those few groups in memory, instead of one timeline query per distinct filter."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.queries = 0
        self._now = -1
        self._groups: dict[tuple[int, int, str, tuple[tuple[str, str], ...]], Projection] = {}
        self._merged: dict[tuple[int, int, tuple[tuple[str, str], ...]], Aggregate] = {}

    def _projection(self, start: int, end: int, groupby: str, where: dict[str, str]) -> Projection:
        key = (start, end, groupby, tuple(sorted(where.items())))
        found = self._groups.get(key)
        if found is None:
            self.queries += 1
            found = self._groups[key] = self.timeline.query(start, end, groupby, where)
        return found

    def read(self, metric: str, window_s: float, filter: Mapping[str, str], now_ms: int) -> MetricReading:
        tl = self.timeline
        start, end = tl.window_start(now_ms, round(window_s * 1000)), tl.window_end(now_ms)
        if now_ms != self._now:
            self._now, self._groups, self._merged = now_ms, {}, {}
        key = (start, end, tuple(sorted(filter.items())))
        aggregate = self._merged.get(key)
        if aggregate is None:
            builtin = {k: v for k, v in filter.items() if k in BUILTIN_DIMENSIONS}
            attributes = [(k, v) for k, v in filter.items() if k not in BUILTIN_DIMENSIONS]
            if attributes:
                name, wanted = attributes[0]
                group = self._projection(start, end, name, builtin).get(wanted)
                aggregate = group.copy() if group is not None else Aggregate()
            else:
                wanted_parts = [(BUILTIN_DIMENSIONS.index(k), v) for k, v in builtin.items()]
                series = self._projection(start, end, SERIES, {})
                aggregate = total(
                    {k: a for k, a in series.items() if all(k.split(SEP)[i] == v for i, v in wanted_parts)}
                )
            self._merged[key] = aggregate
        value = scalar_value(metric, aggregate)
        return MetricReading(value=None if value is None else float(value), span_count=aggregate.count)


class ConstantReader:
    """Answers every read at once: what is left is the engine's own cost."""

    def read(self, metric: str, window_s: float, filter: Mapping[str, str], now_ms: int) -> MetricReading:
        return MetricReading(value=1.0, span_count=100)


def synthetic_rules(rng: random.Random, count: int) -> list[AlertRule]:
    rules = []
    metrics = sorted(METRICS)
    for i in range(count):
        metric = rng.choice(metrics)
        shape = rng.random()
        model = rng.choice(list(MODELS))
        if shape < 0.1:
            flt: dict[str, str] = {}
        elif shape < 0.5:
            flt = {"model": model}
        elif shape < 0.8:
            flt = {"model": model, "caller": rng.choice(CALLERS)}
        elif shape < 0.9:
            flt = {"tier": rng.choice(TIERS)}
        else:
            flt = {"caller": rng.choice(CALLERS), "workflow": rng.choice(WORKFLOWS)}
        threshold = rng.random() if metric == "error_rate" else rng.choice([0.5, 5, 50, 500, 5000])
        rules.append(
            AlertRule(
                f"rule-{i}",
                metric,
                rng.choice(["gt", "lt"]),
                threshold,
                window=rng.choice(WINDOWS),
                min_spans=rng.choice([0, 10]),
                filter=flt,
            )
        )
    return rules


def run_rounds(
    rules: list[AlertRule], reader: MetricReader, start_ms: int, rounds: int, feed: Timeline | None, rng: random.Random
) -> tuple[list[tuple[float, float]], int]:
    states: dict[str, RuleState] = {}
    times: list[tuple[float, float]] = []
    notes = 0
    now = start_ms
    for _ in range(rounds):
        now += round(INTERVAL_S * 1000)
        if feed is not None:
            for _ in range(250):  # ~1,000 spans a minute keep arriving
                feed.add(synthetic_span(rng, now - rng.randint(0, 14_999)), now - rng.randint(0, 14_999))
        began, began_cpu = time.perf_counter(), time.process_time()
        result = evaluate(rules, states, {}, reader, now)
        times.append((time.perf_counter() - began, time.process_time() - began_cpu))
        states = result.states
        notes += len(result.notifications)
    return times, notes


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def summary(times: list[tuple[float, float]]) -> str:
    wall = sorted(w * 1000 for w, _ in times)
    cpu = statistics.median(c * 1000 for _, c in times)
    p95 = wall[min(len(wall) - 1, round(0.95 * (len(wall) - 1)))]
    median = statistics.median(wall)
    return (
        f"wall first {times[0][0] * 1000:.1f} ms, median {median:.1f} ms, p95 {p95:.1f} ms, max {wall[-1]:.1f} ms "
        f"(median {median / 1000 / INTERVAL_S:.1%} of a {INTERVAL_S:g}s interval); CPU median {cpu:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--spans", type=int, default=100_000, help="synthetic spans spread over the last 24h")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--append-results", action="store_true", help="append a section to bench/RESULTS.md")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    now = int(time.time() * 1000)
    timeline = Timeline()
    began = time.perf_counter()
    for _ in range(args.spans):
        at = now - rng.randint(0, 24 * 3600 * 1000)
        timeline.add(synthetic_span(rng, at), at)
    fill_s = time.perf_counter() - began
    rules = synthetic_rules(rng, args.rules)
    unique = len({(r.reader_metric, r.window_s, tuple(sorted(r.filter.items()))) for r in rules})
    shapes = len({(r.window_s, tuple(sorted(r.filter.items()))) for r in rules})

    plain_times, notes = run_rounds(rules, TimelineReader(timeline), now, args.rounds, timeline, rng)
    shared = SharingReader(timeline)
    shared_times, _ = run_rounds(rules, shared, now + args.rounds * 15_000, args.rounds, timeline, rng)
    grouped = SeriesReader(timeline)
    grouped_times, _ = run_rounds(rules, grouped, now + 2 * args.rounds * 15_000, args.rounds, timeline, rng)
    engine_times, _ = run_rounds(rules, ConstantReader(), now, args.rounds, None, rng)

    lines = [
        f"- {args.rules} rules; per round {unique} distinct (metric, window, filter) reads, {shapes} distinct "
        f"(window, filter); {args.spans:,} synthetic spans over 24h in the real `Timeline` (filled in "
        f"{fill_s:.1f}s), 250 new spans before each of {args.rounds} rounds, clock +15s per round",
        f"- the server's reader (tokentrace.core.timeline_reader: per window by series, cached per round): {summary(plain_times)} "
        f"({unique} queries a round, {notes} notifications in all)",
        f"- reader sharing the aggregate per (window, filter) within a round: {summary(shared_times)} "
        f"({shared.queries / args.rounds:.0f} queries a round)",
        f"- reader querying each window by series (or by the one attribute) and filtering in memory: "
        f"{summary(grouped_times)} ({grouped.queries / args.rounds:.0f} queries a round)",
        f"- engine only (constant reader): {summary(engine_times)}",
    ]
    print("\n".join(lines))
    if args.append_results:
        header = (
            f"\n## Alert evaluation: {args.rules} rules per round (bench/alert_eval.py)\n\n"
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} at the end (machine shared with other jobs)\n\n"
            f"`.venv/bin/python bench/alert_eval.py {' '.join(sys.argv[1:])}`\n\n"
        )
        path = Path(__file__).with_name("RESULTS.md")
        if not path.exists():
            path.write_text("# Benchmark results\n")
        with path.open("a") as out:
            out.write(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
