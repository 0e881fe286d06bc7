"""Benchmark: embedded ingest rate, POST /spans in batches of 1000 realistic spans, beside msgspec decoding.

Two kinds of bodies, built up front, each span unique (``--modes``):

- ``current``: ``DemoTraffic`` (several models and providers, callers, errors, timeouts, eval scores, agent
  traces with child spans) that started a minute ago;
- ``backfill``: spans spread uniformly over the last 30 days (the aggregate retention): 60 model/provider/caller
  series, a 6-value attribute, eval scores on most spans, no ``cost_usd`` (the server prices them).

For every client count, each of ``--rounds`` fresh ``tokentrace serve`` subprocesses on a loopback port takes
one more batch first (its first request loads the price table, a one-off ~0.3 CPU-second) and ``--fill`` batches
of other spans (by default 100k spans: the trace index's default ``storage.max_spans``, so the measured batches
meet a full index that evicts, as on a server that has run a while), then all bodies from that many concurrent
aiohttp clients; the rate is spans acknowledged (202, i.e. fsync'd) per wall second, and per second of server
CPU (user + system of the whole process, the fsync thread included); the median round is the figure (this
machine's rounds differ by up to a third). The baseline decodes the same bodies with an untyped
``msgspec.json.decode`` in this process (and, for reference, with ``tokentrace.core.codec.decode_json_spans``);
the ratio is the server's CPU rate over the baseline's.

A back-fill's spans wait for their settled buckets (``Timeline._defer``) until ``FLUSH_FROM`` of them do; then the
server applies half of what waits, in the background between requests. So a back-fill round's server first takes
``FLUSH_FROM`` spans (the warm-up batch and ``FLUSH_FROM / 1000 - 1`` batches of others, unless ``--fill`` asks
for more), and the measured batches are a multiple of ``FLUSH_FROM / 2`` spans (the nearest to ``--batches``): they
hold one such pass per ``FLUSH_FROM / 2`` spans, as a long back-fill does (its steady state), rather than leaving
their work for later. The line after ("through the first ``/metrics?window=30d``") adds what still waits then.

``--profile`` also runs the server under cProfile (main thread only: fsync runs in a thread) and lists the
phases of its path by cumulative time, then the functions by own time.

    .venv/bin/python bench/ingest_embedded.py [--batches 100] [--fill 100] [--rounds 3] [--clients 4]
        [--modes current,backfill] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pstats
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
from benchkit.server import Server, append_results

from tokentrace.core.codec import decode_json_spans, encode_json
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.core.timeline import FLUSH_FROM
from tokentrace.producers.demo import DemoTraffic

BATCH = 1000
#: Functions whose cumulative share of the server's profiled time is reported (file suffix, function name).
PHASES = [
    ("routes/spans.py", "post_spans", "POST /spans handler (all below)"),
    ("core/codec.py", "decode_json_spans", "decode (msgspec + Span.__post_init__)"),
    ("core/ingest.py", "prepare_batch", "prepare_batch (stamp, bounds, price)"),
    ("core/labels.py", "admit", "label caps"),
    ("core/codec.py", "encode_wire", "WAL payload encode (msgpack)"),
    ("stores/embedded.py", "_compile", "compiled batch (decode_batch of the payload)"),
    ("stores/wal.py", "write", "WAL write"),
    ("stores/embedded.py", "_apply", "apply once durable (in the log's flush task, not the handler)"),
    ("core/timeline.py", "add_batch", "Timeline.add_batch"),
    ("core/traces.py", "add_batch", "TraceIndex.add_batch"),
]


def build_bodies(count: int, seed: int) -> list[bytes]:
    """``count`` JSON bodies of exactly ``BATCH`` unique spans that started a minute ago."""
    traffic = DemoTraffic(seed)
    at = now_ms() - 60_000
    return [encode_json(traffic.next_batch(BATCH, at_ms=at)[:BATCH]) for _ in range(count)]


BACKFILL_MODELS = (
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-3-5-sonnet-20241022", "anthropic"),
    ("claude-3-5-haiku-20241022", "anthropic"),
    ("gemini-1.5-flash", "google"),
)
BACKFILL_CALLERS = tuple(f"service-{n:02d}" for n in range(12))  # 5 models x 12 callers = 60 series
BACKFILL_ROUTES = ("chat", "search", "summarize", "classify", "extract", "agent")
DAY_MS = 86_400_000


def build_backfill_bodies(count: int, seed: int) -> list[bytes]:
    """``count`` JSON bodies of ``BATCH`` unique spans that started at uniformly random times over the last 30
    days (kept an hour inside the retention): 60 series, a 6-value ``route`` attribute, most spans scored."""
    rng = random.Random(seed)
    now = now_ms()
    oldest = now - 30 * DAY_MS + 2 * 3_600_000
    bodies = []
    for _ in range(count):
        spans = []
        for _ in range(BATCH):
            model, provider = rng.choice(BACKFILL_MODELS)
            start = rng.randrange(oldest, now - 60_000)
            latency = round(rng.lognormvariate(6.5, 0.5), 1)
            attributes: dict[str, object] = {"route": rng.choice(BACKFILL_ROUTES)}
            if rng.random() < 0.8:
                attributes["eval.score"] = round(rng.random(), 3)
            spans.append(
                {
                    "trace_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "span_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "name": "call",
                    "model": model,
                    "provider": provider,
                    "prompt_tokens": int(rng.lognormvariate(6.5, 0.8)),
                    "comp_tokens": int(rng.lognormvariate(4.8, 0.7)),
                    "latency_ms": latency,
                    "status": "ok" if rng.random() < 0.98 else "error",
                    "caller": rng.choice(BACKFILL_CALLERS),
                    "started_at": format_ms(start),
                    "ended_at": format_ms(start + round(latency)),
                    "attributes": attributes,
                }
            )
        bodies.append(encode_json(spans))
    return bodies


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


def decode_baseline(bodies: list[bytes], repeats: int = 3) -> tuple[Rate, Rate]:
    """``decode_json_spans`` over every body, and untyped msgspec decoding (the baseline): best of ``repeats``."""

    def best(decode: Callable[[bytes], object]) -> Rate:
        rates = []
        for _ in range(repeats):
            began, began_cpu = time.perf_counter(), time.process_time()
            for body in bodies:
                decode(body)
            rates.append(Rate(len(bodies) * BATCH, time.perf_counter() - began, time.process_time() - began_cpu))
        return min(rates, key=lambda rate: rate.cpu_s)

    return best(decode_json_spans), best(msgspec.json.decode)


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


async def read_window(url: str) -> float:
    """``GET /metrics?window=30d`` once; wall seconds."""
    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        async with session.get(f"{url}/metrics", params={"window": "30d"}) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET /metrics answered {response.status}")
        return time.perf_counter() - began


def serve_and_post(
    work: Path, bodies: list[bytes], clients: int, warm_up: list[bytes], prefix: list[str] | None = None
) -> tuple[Rate, Rate]:
    """A fresh server takes ``warm_up`` (its first request loads the price table; the rest fill its trace
    index), then every body; the rate of the bodies by wall time and by the server's CPU time, then the same
    through the first ``/metrics?window=30d`` after them: a back-fill's spans may wait for their settled
    buckets' next pass (``Timeline._defer``), which that read makes (with the query's own work: the
    conservative figure)."""
    server = Server(work / f"data-{clients}-{len(list(work.iterdir()))}", prefix=prefix)
    try:
        asyncio.run(post_all(server.url, warm_up[:1], 1))
        asyncio.run(post_all(server.url, warm_up[1:], clients))
        cpu_before = server.cpu_s()
        wall = asyncio.run(post_all(server.url, bodies, clients))
        cpu = server.cpu_s() - cpu_before
        read_wall = asyncio.run(read_window(server.url))
        read_cpu = server.cpu_s() - cpu_before
    finally:
        server.stop()
    spans = len(bodies) * BATCH
    return Rate(spans, wall, cpu), Rate(spans, wall + read_wall, read_cpu)


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


MODES = {"current": build_bodies, "backfill": build_backfill_bodies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100, help="batches of 1000 spans per client count")
    parser.add_argument("--clients", default="4", help="comma-separated concurrent client counts")
    parser.add_argument("--fill", type=int, default=100, help="batches of other spans posted before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="fresh servers per client count; the median counts")
    parser.add_argument("--modes", default="current,backfill", help="comma-separated: current, backfill")
    parser.add_argument("--profile", action="store_true", help="also run the server under cProfile (4 clients)")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--append-results", action="store_true", help="append a section to bench/RESULTS.md")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(
        f"- goal: 200,000 spans per server CPU-second, batches of {BATCH}, {args.batches} batches per round after "
        f"{args.fill} batches of others, median of {args.rounds} rounds"
    )
    with tempfile.TemporaryDirectory(prefix="tokentrace-bench-") as tmp:
        work = Path(tmp)
        for mode in args.modes.split(","):
            began = time.perf_counter()
            measured, filled = args.batches, args.fill
            if mode == "backfill":  # whole passes over what waits among the measured spans (the module's docstring)
                half = FLUSH_FROM // 2 // BATCH
                measured, filled = half * max(1, round(measured / half)), max(filled, FLUSH_FROM // BATCH - 1)
            warm_up, *bodies = MODES[mode](measured + 1, 1)
            fill = MODES[mode](filled, 2)
            size = sum(map(len, bodies)) / len(bodies)
            print(
                f"built {measured} {mode} bodies ({size / 1024:.0f} KiB each) and {filled} others "
                f"in {time.perf_counter() - began:.1f}s"
            )
            typed, untyped = decode_baseline(bodies)
            baseline = untyped.spans / untyped.cpu_s
            say(f"- {mode} spans, {size / 1024:.0f} KiB of JSON per batch, {measured} batches after {filled} others:")
            say(f"  - baseline, untyped `msgspec.json.decode` of the same bodies: {untyped.line()}")
            say(f"  - `decode_json_spans` of the same bodies (reference): {typed.line()}")
            for clients in client_counts:
                rounds = sorted(
                    (serve_and_post(work, bodies, clients, [warm_up, *fill]) for _ in range(args.rounds)),
                    key=lambda measured: measured[0].cpu_s,
                )
                rate, read = rounds[len(rounds) // 2]
                each = ", ".join(f"{measured.spans / measured.cpu_s:,.0f}" for measured, _ in reversed(rounds))
                say(
                    f"  - `tokentrace serve`, {clients} client(s), median round: {rate.line()}; "
                    f"server CPU rate / baseline = {rate.spans / rate.cpu_s / baseline:.3f} (rounds: {each})"
                )
                say(
                    f"    - through the first `/metrics?window=30d` after them: {read.line()}; "
                    f"server CPU rate / baseline = {read.spans / read.cpu_s / baseline:.3f}"
                )
            if args.profile:
                stats_path = work / f"server-{mode}.prof"
                profiled, _ = serve_and_post(
                    work, bodies, 4, [warm_up, *fill], prefix=[sys.executable, "-m", "cProfile", "-o", str(stats_path)]
                )
                say(f"  - under cProfile (4 clients, overhead included): {profiled.line()}")
                for line in profile_lines(stats_path, args.profile_top, profiled.spans):
                    say("  " + line)
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
