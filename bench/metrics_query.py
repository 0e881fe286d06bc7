"""Benchmark: ``GET /metrics?window=30d`` latency over 30 days of aggregates from 10M synthetic spans.

Building the state span by span (~50 µs a span) would take most of ten minutes, so it is built the way a
restart restores it: per-bucket aggregates. A pool of distinct minute buckets is filled by adding real
spans (``BucketState.add``: 5 models x 3 providers x 4 callers = 60 series, one grouped attribute
``workflow`` with 6 values, errors, timeouts, eval scores, latencies); hour buckets are merges of 60
of them. Every bucket of the window gets its own copy (a msgpack round trip, so nothing is shared):
minute buckets for the fine retention (48h), hour buckets before it, as ``Timeline.compact`` leaves
them. The spans the pool leaves short of exactly 10M are added with ``Timeline.add`` at random times.
The state goes to disk as an ``EmbeddedStore`` snapshot, and a real ``tokentrace serve`` loads it.

Measured through real HTTP (keep-alive, sequential, after warm-up): ``/metrics?window=30d`` and a few
variants, idle and while spans keep arriving (a small POST before each GET invalidates the current
hour's and day's memos, as live traffic does). Memory: the server's RSS with the state minus an empty
server's RSS.

    .venv/bin/python bench/metrics_query.py [--spans 10000000] [--requests 300] [--append-results]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from apibench import Server, append_results, percentile

from tokentrace.api.embedded import embedded_settings
from tokentrace.api.stores.embedded import EmbeddedStore
from tokentrace.config import Config
from tokentrace.core.buckets import BucketState
from tokentrace.core.span import Span, span_time_ms
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, Timeline, TimelineSnapshot

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022", "gemini-1.5-flash"]
PROVIDERS = ["openai", "anthropic", "bedrock"]
CALLERS = ["summarizer-service", "support-bot", "search-api", "agent-runner"]
WORKFLOWS = ["document-summary", "support-chat", "query-rewrite", "research-agent", "extract", "classify"]
QUERIES = [
    "/metrics?window=30d",
    "/metrics?window=30d&groupby=model",
    "/metrics?window=30d&groupby=workflow",
    "/metrics/latency_p99_ms?window=30d",
    "/metrics?window=1h",
]


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
    minute_pool: list[BucketState] = []
    for _ in range(pool):
        state = BucketState()
        for _ in range(per_minute):
            state.add(synthetic_span(rng, now), settings.caps)
        minute_pool.append(state)
    minute_blobs = [msgspec.msgpack.encode(state) for state in minute_pool]
    timings["minute pool"] = time.perf_counter() - began

    began = time.perf_counter()
    hour_blobs = []
    for h in range(pool):
        hour = BucketState()
        for m in range(60):
            hour.merge(minute_pool[(h * 7 + m) % pool])
        hour_blobs.append(msgspec.msgpack.encode(hour))
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


def census(timeline: Timeline) -> str:
    """How many aggregates and sketch bins the state holds (what its memory is made of)."""
    snapshot = timeline.snapshot()
    aggregates = bins = 0
    for state in [*snapshot.fine.values(), *snapshot.coarse.values()]:
        groups = list(state.series.values())
        groups += [a for values in state.attributes.values() for by in values.values() for a in by.values()]
        aggregates += len(groups)
        bins += sum(len(a.latency.positive) + len(a.score.positive) for a in groups)
    return f"{aggregates:,} aggregates holding {bins:,} sketch bins (latency + score)"


async def write_snapshot(data_dir: Path, timeline: Timeline, spans: int) -> None:
    """Persist ``timeline`` as the store's snapshot (what ``close`` writes)."""
    store = EmbeddedStore(data_dir, embedded_settings(Config()))
    await store.open()
    store.timeline.restore(timeline.snapshot())
    store.span_total = spans
    await store.close()


def get(connection: http.client.HTTPConnection, target: str) -> tuple[float, bytes]:
    """One GET over a kept-alive connection: (seconds, body); the answer must be 200."""
    began = time.perf_counter()
    connection.request("GET", target)
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - began
    if response.status != 200:
        raise RuntimeError(f"GET {target} answered {response.status}: {body[:300]!r}")
    return elapsed, body


def post(connection: http.client.HTTPConnection, body: bytes) -> None:
    connection.request("POST", "/spans", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    if response.status != 202:
        raise RuntimeError(f"POST /spans answered {response.status}: {answer[:300]!r}")


def profile_query(work: Path, requests: int, top: int = 20) -> list[str]:
    """cProfile the server over ``requests`` warm ``/metrics?window=30d``; top functions by own time."""
    stats_path = work / "query.prof"
    server = Server(work / "data", prefix=[sys.executable, "-m", "cProfile", "-o", str(stats_path)])
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for _ in range(5):
            get(connection, QUERIES[0])
        for _ in range(requests):
            get(connection, QUERIES[0])
        connection.close()
    finally:
        server.stop()
    raw = pstats.Stats(str(stats_path)).stats  # type: ignore[attr-defined]
    handler = sum(ct for (file, _, name), (*_, ct, _) in raw.items() if name == "all_metrics")
    lines = [
        f"- cProfile of the server, {requests + 5} warm `{QUERIES[0]}` (start-up and snapshot load are in the "
        f"profile too; shares are of the {handler:.2f} s spent in the handler):",
        "",
        "  | own s | share | cumulative s | calls | function |",
        "  |---:|---:|---:|---:|---|",
    ]
    in_handler = [item for item in raw.items() if "msgpack" not in item[0][2] and item[0][2] != "_load_snapshot"]
    for (file, line, name), (_, calls, tt, ct, _) in sorted(in_handler, key=lambda i: i[1][2], reverse=True)[:top]:
        where = file.split("site-packages/")[-1].split("/work/main/")[-1]
        lines.append(f"  | {tt:.2f} | {tt / handler:.1%} | {ct:.2f} | {calls:,} | `{name}` {where}:{line} |")
    return lines


def latency_line(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (
        f"{label}: p50 {percentile(ms, 0.50):.2f} ms, p90 {percentile(ms, 0.90):.2f} ms, "
        f"p99 {percentile(ms, 0.99):.2f} ms, max {ms[-1]:.2f} ms ({len(ms)} requests)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--pool", type=int, default=48, help="distinct minute (and hour) buckets to copy from")
    parser.add_argument("--requests", type=int, default=300, help="measured requests per query (after warm-up)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="also profile the server answering the 30d query")
    parser.add_argument("--append-results", action="store_true", help="append a section to bench/RESULTS.md")
    args = parser.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    began = time.perf_counter()
    timeline, t = build_timeline(args.spans, args.pool, seed=7)
    build_s = time.perf_counter() - began
    say(
        f"- state: {args.spans:,} spans over the 30-day retention; {t['per_minute']:.0f} spans a minute; "
        f"{t['fine_buckets']:.0f} minute buckets (48h) + {t['coarse_buckets']:.0f} hour buckets; 60 series "
        f"(5 models x 3 providers x 4 callers) and `workflow` (6 values) per bucket"
    )
    say(
        f"- built in {build_s:.1f} s by sample-and-merge: {args.pool} minute buckets of real spans "
        f"({t['minute pool']:.1f} s), {args.pool} hour merges ({t['hour pool']:.1f} s), a msgpack copy per "
        f"bucket ({t['copies']:.1f} s), {t['top_up']:.0f} spans added one by one to reach the exact count "
        f"({t['top-up']:.1f} s)"
    )
    say(f"- census: {census(timeline)}")
    with tempfile.TemporaryDirectory(prefix="tokentrace-bench-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        asyncio.run(write_snapshot(work / "data", timeline, args.spans))
        size = sum(p.stat().st_size for p in (work / "data").glob("snapshot-*.bin"))
        del timeline
        say(f"- snapshot: {size / 2**20:.1f} MiB, written in {time.perf_counter() - began:.1f} s")

        empty = Server(work / "empty")
        empty_rss = empty.rss_bytes()
        empty.stop()
        began = time.perf_counter()
        server = Server(work / "data")
        say(f"- `tokentrace serve` loaded it and answered /health after {time.perf_counter() - began:.1f} s")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            cold, body = get(connection, QUERIES[0])
            counted = json.loads(body)["span_count"]
            say(f"- first `{QUERIES[0]}` (cold memos): {cold * 1000:.1f} ms; span_count {counted:,}")
            for target in QUERIES:
                for _ in range(args.warmup):
                    get(connection, target)
                timed = [get(connection, target)[0] for _ in range(args.requests)]
                say(f"- idle, `{target}`: " + latency_line("", timed).lstrip(": "))
            rss = server.rss_bytes()
            say(
                f"- resident memory: {rss / 2**20:.0f} MiB with the state vs {empty_rss / 2**20:.0f} MiB empty: "
                f"the state takes {(rss - empty_rss) / 2**20:.0f} MiB"
            )
            rng = random.Random(11)
            for target in QUERIES[:3]:
                timed = []
                for _ in range(args.warmup + args.requests):
                    post(connection, msgspec.json.encode([synthetic_span(rng, now_ms() - 1000) for _ in range(10)]))
                    timed.append(get(connection, target)[0])
                say(
                    f"- while ingesting (10 new spans before each GET), `{target}`: "
                    + latency_line("", timed[args.warmup :]).lstrip(": ")
                )
            say("- goal: p99 <= 20 ms for `/metrics?window=30d`")
            connection.close()
        finally:
            server.stop()
        if args.profile:
            for line in profile_query(work, args.requests):
                say(line)
    if args.append_results:
        append_results(
            "GET /metrics?window=30d over 10M spans of state (bench/metrics_query.py)",
            f".venv/bin/python bench/metrics_query.py {' '.join(sys.argv[1:])}",
            lines,
        )


if __name__ == "__main__":
    main()
