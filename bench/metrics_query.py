"""Benchmark: ``GET /metrics?window=30d`` latency over 30 days of aggregates from 10M synthetic spans.

The state is built the way a restart restores it, as per-bucket aggregates (``benchkit.state``): a pool of
distinct minute buckets filled with real spans (5 models x 3 providers x 4 callers = 60 series, one grouped
attribute ``workflow`` with 6 values, errors, timeouts, eval scores, latencies), hour buckets merged from 60 of
them, a copy per bucket of the window (minute buckets for the fine retention, 48h, hour buckets before it),
and the spans the pool leaves short of exactly 10M added with ``Timeline.add`` at random times. The state goes
to disk as an ``EmbeddedStore`` snapshot, with the memos a running server computes in its warm-up task
(``Timeline.warm_memos``), and a real ``tokentrace serve`` loads it.

Measured through real HTTP (keep-alive, sequential, after warm-up): the restart (spawn to ``/health`` 200),
the first ``/metrics?window=30d``, then ``/metrics?window=30d`` and a few variants, idle and while spans keep
arriving (a small POST before each GET invalidates the current hour's and day's memos, as live traffic
does). Memory: the server's RSS with the state minus an empty server's RSS. Back-fill: ``--backfill`` spans
spread over the retention are POSTed (batches of 1000), the RSS is read after a maintenance pass (the
server's 30 s interval), and again after a restart of the same state.

``--baseline-python`` (e.g. another checkout's ``.venv/bin/python``) runs the same measurements with that
install's server on a copy of the same snapshot (the snapshot format is shared), and a table sets them
side by side.

    .venv/bin/python bench/metrics_query.py [--spans 10000000] [--requests 300] [--baseline-python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from benchkit.server import Server, percentile
from benchkit.state import build_timeline, synthetic_span, write_snapshot

from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import HOUR_MS, Timeline

QUERIES = [
    "/metrics?window=30d",
    "/metrics?window=30d&groupby=model",
    "/metrics?window=30d&groupby=workflow",
    "/metrics/latency_p99_ms?window=30d",
    "/metrics?window=1h",
]


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


def measure(label: str, python: str, data: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """One server flavour over ``data`` (a copy of the snapshot): restart, first query, latencies, memory,
    back-fill; prints its lines and returns its figures."""
    figures: dict[str, float] = {}

    def say(line: str) -> None:
        print(f"[{label}] {line}", flush=True)

    empty = Server(work / f"empty-{label}", prefix=[python])
    empty_rss = empty.rss_bytes()
    empty.stop()
    began = time.perf_counter()
    server = Server(data, prefix=[python])
    figures["restart_s"] = time.perf_counter() - began
    say(f"restart: /health 200 after {figures['restart_s']:.2f} s")
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        cold, body = get(connection, QUERIES[0])
        figures["first_ms"] = cold * 1000
        counted = json.loads(body)["span_count"]
        say(f"first `{QUERIES[0]}`: {cold * 1000:.1f} ms; span_count {counted:,}")
        for target in QUERIES:
            began = time.perf_counter()
            get(connection, target)
            first = time.perf_counter() - began
            for _ in range(args.warmup):
                get(connection, target)
            timed = [get(connection, target)[0] for _ in range(args.requests)]
            figures[f"idle {target}"] = percentile(sorted(timed), 0.99) * 1000
            say(f"idle `{target}` (first {first * 1000:.0f} ms): " + latency_line("", timed).lstrip(": "))
        rss = server.rss_bytes()
        figures["state_mib"] = (rss - empty_rss) / 2**20
        say(
            f"RSS {rss / 2**20:.0f} MiB vs {empty_rss / 2**20:.0f} MiB empty: the state takes {figures['state_mib']:.0f} MiB"
        )
        rng = random.Random(11)
        for target in QUERIES[:3]:
            timed = []
            for _ in range(args.warmup + args.requests):
                post(connection, msgspec.json.encode([synthetic_span(rng, now_ms() - 1000) for _ in range(10)]))
                timed.append(get(connection, target)[0])
            figures[f"ingesting {target}"] = percentile(sorted(timed[args.warmup :]), 0.99) * 1000
            say(f"ingesting `{target}`: " + latency_line("", timed[args.warmup :]).lstrip(": "))
        if args.backfill:
            before = server.rss_bytes()
            oldest = now_ms() - 30 * 86_400_000 + 2 * HOUR_MS
            began, began_cpu = time.perf_counter(), server.cpu_s()
            for done in range(0, args.backfill, 1000):
                batch = [
                    synthetic_span(rng, rng.randrange(oldest, now_ms())) for _ in range(min(1000, args.backfill - done))
                ]
                post(connection, msgspec.json.encode(batch))
            posted_s, posted_cpu = time.perf_counter() - began, server.cpu_s() - began_cpu
            figures["backfill_rate"] = args.backfill / posted_cpu
            right_after = server.rss_bytes()
            connection.close()
            time.sleep(args.settle)
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
            cold, _ = get(connection, QUERIES[0])
            settled_cpu = server.cpu_s() - began_cpu
            settled = server.rss_bytes()
            traced = json.loads(get(connection, "/traces?limit=1")[1])["total"]
            figures["backfill_mib"] = (settled - before) / 2**20
            figures["backfilled_mib"] = (settled - empty_rss) / 2**20
            say(
                f"back-fill: {args.backfill:,} spans over 30 days posted in {posted_s:.1f} s, {posted_cpu:.1f} s of server CPU "
                f"({figures['backfill_rate']:,.0f} spans per CPU-second; {settled_cpu:.1f} s through the maintenance pass "
                f"and the query below); RSS +{(right_after - before) / 2**20:.0f} MiB "
                f"right after, +{figures['backfill_mib']:.0f} MiB {args.settle:.0f} s later (then `{QUERIES[0]}` {cold * 1000:.0f} ms); "
                f"the trace index holds {traced:,} traces (storage.max_spans bounds its spans)"
            )
        connection.close()
    finally:
        server.stop()
    snapshots = sorted(data.glob("snapshot-*.bin"))
    figures["snapshot_mib"] = snapshots[-1].stat().st_size / 2**20
    if args.backfill:
        began = time.perf_counter()
        server = Server(data, prefix=[python])
        restart_s = time.perf_counter() - began
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
            cold, _ = get(connection, QUERIES[0])
            figures["after_restart_mib"] = (server.rss_bytes() - empty_rss) / 2**20
            say(
                f"restarted with the back-filled state ({figures['snapshot_mib']:.1f} MiB snapshot): /health after "
                f"{restart_s:.2f} s, first query {cold * 1000:.0f} ms, the state takes {figures['after_restart_mib']:.0f} MiB"
            )
            connection.close()
        finally:
            server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--pool", type=int, default=48, help="distinct minute (and hour) buckets to copy from")
    parser.add_argument("--requests", type=int, default=300, help="measured requests per query (after warm-up)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--backfill", type=int, default=500_000, help="spans to back-fill over 30 days (0: none)")
    parser.add_argument("--settle", type=float, default=35.0, help="seconds to wait after the back-fill")
    parser.add_argument("--baseline-python", help="also measure the server of this Python's install")
    parser.add_argument("--profile", action="store_true", help="also profile the server answering the 30d query")
    args = parser.parse_args()

    def say(line: str) -> None:
        print(line, flush=True)

    began = time.perf_counter()
    timeline, t = build_timeline(args.spans, args.pool, seed=7)
    build_s = time.perf_counter() - began
    say(
        f"state: {args.spans:,} spans over the 30-day retention; {t['per_minute']:.0f} spans a minute; "
        f"{t['fine_buckets']:.0f} minute buckets (48h) + {t['coarse_buckets']:.0f} hour buckets; 60 series "
        f"(5 models x 3 providers x 4 callers) and `workflow` (6 values) per bucket; built in {build_s:.1f} s"
    )
    say(f"census: {census(timeline)}")
    flavours = [("this tree", sys.executable)]
    if args.baseline_python:
        commit = subprocess.run(
            [
                "git",
                "-C",
                str(Path(args.baseline_python).absolute().parents[2]),
                "rev-parse",
                "--short",
                "HEAD",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        flavours.insert(0, (f"baseline {commit or '?'}", args.baseline_python))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tokentrace-bench-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        asyncio.run(write_snapshot(work / "data", timeline, args.spans))
        size = sum(p.stat().st_size for p in (work / "data").glob("snapshot-*.bin"))
        del timeline
        say(
            f"snapshot (this tree's format, with its memos): {size / 2**20:.1f} MiB, written in {time.perf_counter() - began:.1f} s"
        )
        for label, python in flavours:
            copy = work / f"data-{label.split()[0]}"
            shutil.copytree(work / "data", copy)
            results[label] = measure(label.split()[0], python, copy, work, args)
            shutil.rmtree(copy)
        if args.profile:
            for line in profile_query(work, args.requests):
                say(line)
    rows = [
        ("state RSS (MiB)", "state_mib", "<= 250"),
        ("snapshot on disk after the run (MiB)", "snapshot_mib", "-"),
        ("restart to /health 200 (s)", "restart_s", "<= 2"),
        ("first /metrics?window=30d (ms)", "first_ms", "<= 200"),
        *((f"p99 idle {q} (ms)", f"idle {q}", "keep") for q in QUERIES),
        *((f"p99 ingesting {q} (ms)", f"ingesting {q}", "keep") for q in QUERIES[:3]),
    ]
    if args.backfill:
        rows += [
            ("back-fill: spans per server CPU-second while posting", "backfill_rate", ">= 200,000"),
            (f"state RSS after back-filling {args.backfill:,} spans (MiB)", "backfilled_mib", "<= the next row"),
            ("the same state's RSS after a restart (MiB)", "after_restart_mib", "-"),
        ]
    say("")
    say("| measure | " + " | ".join(results) + " | goal |")
    say("|---|" + "---:|" * len(results) + "---|")
    for name, key, goal in rows:
        cells = " | ".join(f"{figures.get(key, float('nan')):,.1f}" for figures in results.values())
        say(f"| {name} | {cells} | {goal} |")


if __name__ == "__main__":
    main()
