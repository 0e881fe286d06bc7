"""Benchmark: embedded ingest rate, POST /spans in batches of 1000 realistic spans, beside msgspec decoding.

Bodies are built up front from ``DemoTraffic`` (several models and providers, callers, errors, timeouts,
eval scores, agent traces with child spans), each span unique. For every client count a fresh
``tokentrace serve`` subprocess on a loopback port takes all bodies from that many concurrent aiohttp
clients; the rate is spans acknowledged (202, i.e. fsync'd) per wall second, and per second of server
CPU (the server is one event loop: its CPU rate is its one-core rate). The baseline decodes the same
bodies with ``tokentrace.core.codec.decode_json_spans`` in this process.

``--profile`` also runs the server under cProfile (main thread only: fsync runs in a thread) and times
each phase of the server-side path in-process without HTTP: decode, prepare_batch, WAL encode + write,
Timeline.add, TraceIndex.add and the fsync wait.

    .venv/bin/python bench/ingest_embedded.py [--batches 100] [--clients 1,4,16] [--profile] [--append-results]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
from apibench import Server, append_results

from tokentrace.api.embedded import embedded_settings, price_table
from tokentrace.api.stores.embedded import EmbeddedStore
from tokentrace.config import Config
from tokentrace.core.codec import decode_json_spans, encode_json, encode_wire
from tokentrace.core.ingest import prepare_batch
from tokentrace.core.span import span_time_ms
from tokentrace.core.timefmt import now_ms, parse_duration
from tokentrace.producers.demo import DemoTraffic

BATCH = 1000
#: Functions whose cumulative share of the server's profiled time is reported (file suffix, function name).
PHASES = [
    ("routes/spans.py", "post_spans", "POST /spans handler (all below)"),
    ("core/codec.py", "decode_json_spans", "decode (msgspec + Span.__post_init__)"),
    ("core/ingest.py", "prepare_batch", "prepare_batch (stamp, bounds, price)"),
    ("core/codec.py", "encode_wire", "WAL payload encode (msgpack)"),
    ("stores/wal.py", "write", "WAL write"),
    ("core/timeline.py", "add", "Timeline.add"),
    ("core/traces.py", "add", "TraceIndex.add"),
]


def build_bodies(count: int, seed: int) -> list[bytes]:
    """``count`` JSON bodies of exactly ``BATCH`` unique spans that started a minute ago."""
    traffic = DemoTraffic(seed)
    at = now_ms() - 60_000
    return [encode_json(traffic.next_batch(BATCH, at_ms=at)[:BATCH]) for _ in range(count)]


@dataclass
class Rate:
    spans: int
    wall_s: float
    cpu_s: float

    def line(self) -> str:
        return (
            f"{self.spans / self.wall_s:,.0f} spans/s wall, {self.spans / self.cpu_s:,.0f} spans per CPU-second "
            f"({self.spans:,} spans, {self.wall_s:.2f} s wall, {self.cpu_s:.2f} s CPU)"
        )


def decode_baseline(bodies: list[bytes]) -> tuple[Rate, Rate]:
    """decode_json_spans over every body, and untyped msgspec decoding for reference."""
    began, began_cpu = time.perf_counter(), time.process_time()
    spans = sum(len(decode_json_spans(body)) for body in bodies)
    typed = Rate(spans, time.perf_counter() - began, time.process_time() - began_cpu)
    began, began_cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        msgspec.json.decode(body)
    untyped = Rate(spans, time.perf_counter() - began, time.process_time() - began_cpu)
    return typed, untyped


async def post_all(url: str, bodies: list[bytes], clients: int) -> float:
    """POST every body from ``clients`` concurrent clients; wall seconds. Every answer must be 202."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(f"{url}/spans", data=body) as response:
                answer = await response.read()
                if response.status != 202:
                    raise RuntimeError(f"POST /spans answered {response.status}: {answer[:300]!r}")

    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return time.perf_counter() - began


def serve_and_post(work: Path, bodies: list[bytes], clients: int, prefix: list[str] | None = None) -> Rate:
    """A fresh server takes every body; the rate by wall time and by the server's CPU time."""
    server = Server(work / f"data-{clients}-{len(list(work.iterdir()))}", prefix=prefix)
    try:
        cpu_before = server.cpu_s()
        wall = asyncio.run(post_all(server.url, bodies, clients))
        cpu = server.cpu_s() - cpu_before
    finally:
        server.stop()
    return Rate(len(bodies) * BATCH, wall, cpu)


async def phase_times(work: Path, bodies: list[bytes]) -> dict[str, float]:
    """Seconds per phase of the server-side path, in-process and without HTTP (mirrors POST /spans)."""
    config = Config()
    store = EmbeddedStore(work / "phases", embedded_settings(config))
    await store.open()
    pricer = price_table(config)
    skew_ms = round(parse_duration(config.aggregation.max_future_skew) * 1000)
    times = dict.fromkeys(
        ["decode", "prepare_batch", "wal encode", "wal write", "Timeline.add", "TraceIndex.add", "fsync wait"], 0.0
    )
    assert store._wal is not None
    clock = time.perf_counter
    try:
        for body in bodies:
            t0 = clock()
            spans = decode_json_spans(body)
            t1 = clock()
            arrival = now_ms()
            prepare_batch(spans, arrival, pricer, store.oldest_allowed_ms(arrival), skew_ms)
            t2 = clock()
            payload = encode_wire(spans)
            t3 = clock()
            durable = store._wal.write(payload, lambda: None)  # applied below, phase by phase
            t4 = clock()
            for span in spans:
                store.timeline.add(span, span_time_ms(span))
            t5 = clock()
            for span in spans:
                store.traces.add(span)
            t6 = clock()
            await durable
            t7 = clock()
            for name, seconds in zip(
                times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6), strict=True
            ):
                times[name] += seconds
    finally:
        await store.close()
    return times


def profile_lines(stats_path: Path, top: int, spans: int) -> list[str]:
    """The server profile: named phases by cumulative time, then the top functions by own time.

    Shares are of the time inside the ``POST /spans`` handler, so start-up (imports, price data) is out.
    """
    stats = pstats.Stats(str(stats_path))
    raw = stats.stats  # type: ignore[attr-defined]

    def cumulative(suffix: str, function: str) -> float:
        return sum(
            ct for (file, _, name), (_, _, _, ct, _) in raw.items() if file.endswith(suffix) and name == function
        )

    handler = cumulative(*PHASES[0][:2])
    lines = [
        f"- cProfile of the server (main thread; fsync runs in a thread): {handler:.2f} s in the POST /spans handler"
    ]
    for suffix, function, label in PHASES:
        seconds = cumulative(suffix, function)
        lines.append(
            f"  - {label}: {seconds:.2f} s cumulative, {seconds / spans * 1e6:.1f} µs/span, {seconds / handler:.1%} of the handler"
        )
    lines += [
        f"- top {top} functions by own time (share of the handler's time; start-up included in the ranking):",
        "",
        "  | own s | share | cumulative s | calls | function |",
        "  |---:|---:|---:|---:|---|",
    ]
    ranked = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (file, line, name), (_, calls, tt, ct, _) in ranked:
        where = file.split("site-packages/")[-1].split("/work/main/")[-1]
        lines.append(f"  | {tt:.2f} | {tt / handler:.1%} | {ct:.2f} | {calls:,} | `{name}` {where}:{line} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100, help="batches of 1000 spans per client count")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    parser.add_argument("--profile", action="store_true", help="also profile the server-side path")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--append-results", action="store_true", help="append a section to bench/RESULTS.md")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    began = time.perf_counter()
    bodies = build_bodies(args.batches, seed=1)
    size = sum(map(len, bodies)) / len(bodies)
    print(
        f"built {args.batches} bodies of {BATCH} spans ({size / 1024:.0f} KiB each) in {time.perf_counter() - began:.1f}s"
    )
    typed, untyped = decode_baseline(bodies)
    say(f"- batches of {BATCH} DemoTraffic spans, {size / 1024:.0f} KiB of JSON each, {args.batches} batches per run")
    say(f"- baseline `decode_json_spans` alone, same bodies, this process: {typed.line()}")
    say(f"- reference: untyped `msgspec.json.decode` of the same bodies: {untyped.line()}")
    with tempfile.TemporaryDirectory(prefix="tokentrace-bench-") as tmp:
        work = Path(tmp)
        for clients in client_counts:
            rate = serve_and_post(work, bodies, clients)
            ratio = (rate.spans / rate.cpu_s) / (typed.spans / typed.cpu_s)
            say(
                f"- `tokentrace serve`, {clients} concurrent client(s): {rate.line()}; "
                f"server CPU rate / decode-alone rate = {ratio:.2f}"
            )
        say("- goal: 200,000 spans/s on one core")
        if args.profile:
            phases = asyncio.run(phase_times(work, bodies))
            spent = sum(phases.values())
            count = len(bodies) * BATCH
            say(
                f"- server-side path in-process, no HTTP ({count:,} spans): "
                f"{count / spent:,.0f} spans/s; per span: "
                + ", ".join(
                    f"{name} {seconds / count * 1e6:.1f} µs ({seconds / spent:.0%})" for name, seconds in phases.items()
                )
            )
            stats_path = work / "server.prof"
            profiled = serve_and_post(work, bodies, 4, prefix=[sys.executable, "-m", "cProfile", "-o", str(stats_path)])
            say(f"- under cProfile (4 clients, overhead included): {profiled.line()}")
            for line in profile_lines(stats_path, args.profile_top, profiled.spans):
                say(line)
            buffer = io.StringIO()
            pstats.Stats(str(stats_path), stream=buffer).sort_stats("cumulative").print_stats(40)
            print(buffer.getvalue())
    if args.append_results:
        append_results(
            "Embedded ingest: POST /spans in batches of 1000 (bench/ingest_embedded.py)",
            f".venv/bin/python bench/ingest_embedded.py {' '.join(sys.argv[1:])}",
            lines,
        )


if __name__ == "__main__":
    main()
