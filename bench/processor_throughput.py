"""Processor throughput: one ``tokentrace worker`` (and two) against an aiokafka decode baseline and quixstreams.

Starts a single-node Kafka broker and a redis-server (``tokentrace.devcluster``), fills a 4-partition topic with
``--spans`` spans in ``--batch``-span wire messages (started within the last minute, as live traffic is),
then measures, on the same topic in the same run, each with a fresh consumer group:

* baseline: an aiokafka consumer that reads every message and decodes it with msgspec (``decode_wire``);
* quixstreams: bench/quixstreams_pipeline.py in a subprocess, a quixstreams app that applies every message
  with the worker's own ``Applier`` (same decode, stamping and bucket additions) into quixstreams'
  RocksDB state (``--quix-guarantee``, exactly-once by default; at-least-once is tried if that fails), from
  the end of its first message to the message that completes the count (start-up and final commit excluded);
* one worker: from its first counted span to the last, read from the Redis view's exact span counter
  (the worker's start-up and recovery are left out, the changelog writes, acks and Redis writes are in);
* two workers of a fresh consumer group on the same topic (scaling, on however many cores there are), from
  the moment both are ready: the rebalance as the second joins is reported, not charged to the rate
  (bench/worker_scaling.py measures scaling with a CPU quota per worker, when the cores are too few);
* freshness: at a steady ``--fresh-rate`` through one worker, the time from the broker's ack of a batch
  (the moment ``POST /spans`` answers 202) until a ``/metrics`` query counts it (p50/p99): at the n-th ack,
  until the query counts n batches, after one span to each partition has been counted (warm-up). 100-span batches,
  up to 16 awaiting their ack at once (as concurrent clients would), from a pool made in advance (made on the fly,
  one at a time, they cost this script half a core at 5k spans/s; now a fifth).

The four rates are measured ``--rounds`` times, in that order each round (a shared machine is noisy); with
more than one round the table gives the median of each and the ratios of the medians, after the rounds.

Run: ``.venv/bin/python bench/processor_throughput.py [--spans 200000] [--batch 500] [--rounds 1]``.
The quixstreams row needs the ``bench`` extra (``.venv/bin/pip install -e '.[dev,bench]'``); without it that
row is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from benchkit.procfs import code, cpu_model, cpu_seconds, load
from benchkit.spans import make_spans
from benchkit.topics import create_topic, produce
from benchkit.workers import Workers, workers_run

from tokentrace.api.stores.base import StoreUnavailable
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.codec import decode_wire
from tokentrace.core.span import Span
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import total
from tokentrace.core.topic import partition_for
from tokentrace.devcluster.kafka import KafkaCluster
from tokentrace.devcluster.redis import RedisServer

#: The freshness run sends 100-span batches from this many made in advance (making spans costs this script
#: more CPU than sending them), with up to ``FRESH_IN_FLIGHT`` awaiting the broker's ack at once, as many
#: concurrent ``POST /spans`` would.
FRESH_POOL = 50
FRESH_IN_FLIGHT = 16


async def baseline(bootstrap: str, topic: str, partitions: int, total: int) -> float:
    """Spans/s of a consumer that only reads and decodes."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        remaining = {tp for tp in parts if ends[tp] > 0}
        counted = 0
        began = time.perf_counter()
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    counted += len(decode_wire(record.value or b""))
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        elapsed = time.perf_counter() - began
        assert counted == total, (counted, total)
        return total / elapsed
    finally:
        with contextlib.suppress(asyncio.CancelledError):  # aiokafka 0.14 without a group id
            await consumer.stop()


async def quixstreams_run(
    bootstrap: str, topic: str, total: int, logs: Path, guarantee: str, tag: str
) -> dict[str, Any]:
    """bench/quixstreams_pipeline.py in a subprocess (its own process, as a worker is); its JSON result."""
    pipeline = Path(__file__).with_name("quixstreams_pipeline.py")
    group = f"quixstreams-{tag}-{guarantee}-{topic}"
    argv = [sys.executable, str(pipeline), "--bootstrap", bootstrap, "--topic", topic, "--expect", str(total)]
    argv += ["--group", group, "--guarantee", guarantee]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    (logs / f"{group}.log").write_bytes(err)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(err.decode(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"quixstreams pipeline ({guarantee}) exited {proc.returncode}: {out.decode()}\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def quixstreams_rate(
    bootstrap: str, topic: str, total: int, logs: Path, guarantee: str, tag: str
) -> dict[str, Any]:
    """The quixstreams pipeline's result with ``guarantee``; with at-least-once if exactly-once fails."""
    try:
        return await quixstreams_run(bootstrap, topic, total, logs, guarantee, tag)
    except RuntimeError as exc:
        if guarantee != "exactly-once":
            raise
        print(f"quixstreams with exactly-once failed, trying at-least-once: {exc}", file=sys.stderr)
        result = await quixstreams_run(bootstrap, topic, total, logs, "at-least-once", tag)
        result["note"] = "exactly-once failed"
        return result


@dataclass
class Freshness:
    latencies: list[float]  # sorted, seconds
    wall_s: float  # the steady phase
    sent: int
    worker_cpu_s: float
    script_cpu_s: float  # this process: the producer and the polling reader
    failed: list[str]  # batches the broker did not acknowledge (POST /spans would answer 503): the errors


async def freshness(kafka: KafkaCluster, redis: RedisServer, rate: float, seconds: float, logs: Path) -> Freshness:
    """Seconds from the broker's ack of a batch (what POST /spans answers 202 on) to its spans being
    counted in a ``/metrics`` query, at a steady ``rate`` spans/s through one worker; with the CPU the
    worker and this script (producer and reader, sharing the machine) used meanwhile."""
    partitions = 4
    topic = await create_topic(kafka, "fresh", partitions)
    prefix = f"fresh-{topic}:"
    workers = Workers(kafka.bootstrap, redis.url, topic, logs, app_id=f"fresh-{topic}", extra_args=["--prefix", prefix])
    writer = RedisStore(redis.url, kafka.bootstrap, topic, prefix=prefix)
    reader = RedisStore(redis.url, kafka.bootstrap, topic, prefix=prefix)
    await writer.open()
    await reader.open()
    workers.start()
    try:
        # One span to each partition first, until all are counted: the worker is up, and the first sends to a
        # topic made a moment ago (its partitions' leaders, the producer's metadata) are out of the way.
        rng = random.Random(2)
        warmup: dict[int, Span] = {}
        while len(warmup) < partitions:
            span = make_spans(1, rng, spread_ms=1)[0]
            warmup.setdefault(partition_for(span.trace_id, range(partitions)), span)
        for span in warmup.values():
            await writer.ingest([span])
        for _ in range(600):
            if (await reader.health()).span_count == len(warmup):
                break
            await asyncio.sleep(0.1)
        batch = 100
        pool = [make_spans(batch, rng, spread_ms=1000) for _ in range(FRESH_POOL)]  # made before the clock runs
        acked: list[float] = []  # when the broker acked each batch, in the order of the acks
        latencies: list[float] = []
        sent = 0
        done = asyncio.Event()

        async def poll() -> None:
            # At each ack the sender holds a 202 for len(acked) batches; they are visible once a /metrics query
            # counts that many. (In sending order instead, one slow ack would hold every later batch back.)
            i = 0
            while not done.is_set() or i < len(acked):
                now = now_ms()
                counted = total(await reader.query(now - 3_600_000, now + 60_000, None, {})).count - len(warmup)
                seen = time.perf_counter()
                while i < len(acked) and (i + 1) * batch <= counted:
                    latencies.append(seen - acked[i])
                    i += 1
                await asyncio.sleep(0.05)

        slots = asyncio.Semaphore(FRESH_IN_FLIGHT)

        failed: list[str] = []

        async def send(k: int) -> None:
            try:
                await writer.ingest(pool[k % len(pool)])  # returns once Kafka acked: when POST /spans answers 202
                acked.append(time.perf_counter())
            except StoreUnavailable as exc:  # not acked: left out (a client would send it again)
                failed.append(str(exc))
            finally:
                slots.release()

        poller = asyncio.create_task(poll())
        sends: list[asyncio.Task[None]] = []
        worker_pid = workers.procs[0].pid
        worker_cpu, script_cpu = cpu_seconds(worker_pid), time.process_time()
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            await slots.acquire()
            sends.append(asyncio.create_task(send(len(sends))))
            sent += batch
            ahead = sent / rate - (time.perf_counter() - began)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*sends)
        done.set()
        await asyncio.wait_for(poller, 120)
        return Freshness(
            sorted(latencies),
            time.perf_counter() - began,
            sent,
            cpu_seconds(worker_pid) - worker_cpu,
            time.process_time() - script_cpu,
            failed,
        )
    finally:
        workers.stop_all()
        await writer.close()
        await reader.close()


def _round(rates: dict[str, list[float | None]], index: int) -> str:
    return ", ".join(
        f"{name} " + ("failed" if values[index] is None else f"{values[index]:,.0f}")
        for name, values in rates.items()
        if values
    )


def _x(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="spans per Kafka message")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure the four rates this many times (0: freshness only)"
    )
    parser.add_argument("--quix-guarantee", choices=("exactly-once", "at-least-once"), default="exactly-once")
    parser.add_argument("--fresh-rate", type=float, default=5000, help="spans/s for the freshness run")
    parser.add_argument("--fresh-runs", type=int, default=1, help="freshness runs (30 s each, a fresh worker each)")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="tokentrace-bench-"))
    has_quix = importlib.util.find_spec("quixstreams") is not None
    load_before = load()
    code_before = code()
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rates: dict[str, list[float | None]] = {"base": [], "quix": [], "one": [], "two": []}
    quix_runs: list[dict[str, Any]] = []
    failures: list[str] = []
    with KafkaCluster(1) as kafka, RedisServer() as redis:
        topic = await create_topic(kafka, "bench", args.partitions)
        if args.rounds:
            spans = make_spans(args.spans, random.Random(1), spread_ms=60_000)
            await produce(kafka.bootstrap, topic, spans, batch=args.batch)
        for round_ in range(1, args.rounds + 1):
            tag = f"r{round_}"
            rates["base"].append(await baseline(kafka.bootstrap, topic, args.partitions, args.spans))
            if has_quix:
                run = await quixstreams_rate(kafka.bootstrap, topic, args.spans, logs, args.quix_guarantee, tag)
                quix_runs.append(run)
                rates["quix"].append(run["rate"])
            for name, count in (("one", 1), ("two", 2)):
                try:
                    rate: float | None = (
                        await workers_run(kafka, redis, topic, count, args.spans, logs, tag, partitions=args.partitions)
                    ).rate
                except RuntimeError as exc:  # an inexact count: reported, left out of the medians
                    rate = None
                    failures.append(f"round {round_}: {exc}")
                    print(failures[-1], file=sys.stderr)
                rates[name].append(rate)
            print(f"round {round_}: {_round(rates, -1)} spans/s; load {load()}", file=sys.stderr)
        fresh_runs: list[Freshness] = []
        for _ in range(args.fresh_runs):  # each on an empty Redis, like a new deployment
            flusher = aioredis.Redis.from_url(redis.url)
            # ASYNC: freed in the background; a blocking FLUSHALL of 300k-span rounds outlasted the client's timeout
            await flusher.flushall(asynchronous=True)
            await flusher.aclose()
            fresh_runs.append(await freshness(kafka, redis, args.fresh_rate, 30, logs))
    load_after = load()
    code_after = code()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; {began}; Python {platform.python_version()}; "
        f"load average {load_before} before, {load_after} after"
    )
    print(f"code: {code_before}" + (f" at the start, {code_after} at the end" if code_after != code_before else ""))
    if args.rounds:
        report_rates(args, rates, quix_runs, failures)
    for fresh in fresh_runs:
        lat = fresh.latencies
        p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
        print(
            f"freshness at {args.fresh_rate:,.0f} spans/s (broker ack -> counted in /metrics), {len(lat)} batches "
            f"({fresh.sent / fresh.wall_s:,.0f} spans/s sent):"
        )
        print(f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {lat[-1]:.2f} s")
        print(
            f"CPU meanwhile: worker {100 * fresh.worker_cpu_s / fresh.wall_s:.0f} % of a core, this script "
            f"(producer + reader) {100 * fresh.script_cpu_s / fresh.wall_s:.0f} %"
        )
        if fresh.failed:
            print(
                f"{len(fresh.failed)} batches not acknowledged by the broker (503 from POST /spans): {fresh.failed[0]}"
            )


def report_rates(
    args: argparse.Namespace,
    rates: dict[str, list[float | None]],
    quix_runs: list[dict[str, Any]],
    failures: list[str],
) -> None:
    base, quix, one, two = (
        statistics.median([v for v in rates[name] if v is not None] or [0.0]) for name in ("base", "quix", "one", "two")
    )
    print(
        f"{args.spans} spans, {args.batch}-span messages, {args.partitions} partitions, broker + Redis on the same host"
        + (f"; median of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    if args.rounds > 1:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}: {_round(rates, round_)} spans/s")
    quix_label = "quixstreams (not installed: pip install -e '.[bench]')"
    if quix_runs:
        last = quix_runs[-1]
        guarantees = sorted({run["guarantee"] for run in quix_runs})
        quix_label = (
            f"quixstreams {last['quixstreams']} ({'/'.join(guarantees)}, RocksDB state, "
            f"{last['commit_interval_s']:g} s commits; worker's Applier)"
        )
    print("| pipeline | spans/s | vs baseline | vs quixstreams |")
    print("|---|---|---|---|")
    print(f"| aiokafka consumer + msgspec decode (baseline) | {base:,.0f} | 1.00x | {_x(base, quix)} |")
    if quix_runs:
        print(f"| {quix_label} | {quix:,.0f} | {_x(quix, base)} | 1.00x |")
    print(
        f"| 1 tokentrace worker (Faust, exact tables, changelog acks, Redis view) | {one:,.0f} | {_x(one, base)} "
        f"| {_x(one, quix)} |"
    )
    print(f"| 2 tokentrace workers | {two:,.0f} | {_x(two, base)} | {_x(two, quix)} |")
    print(
        f"ratios: worker / baseline {_x(one, base)}, worker / quixstreams {_x(one, quix)}, 2 workers / 1 {_x(two, one)}"
    )
    for run in quix_runs:
        print(
            f"quixstreams run ({run['guarantee']}{', ' + run['note'] if 'note' in run else ''}): "
            f"{run['spans']:,} spans in {run['messages']} messages, start-up {run['startup_s']:.1f} s, "
            f"processing {run['processing_s']:.1f} s (in Applier.apply {run['apply_s']:.1f} s, "
            f"state writes {run['write_s']:.2f} s), stop + final commit {run['shutdown_s']:.1f} s"
        )
    for failure in failures:
        print(f"FAILED (not in the medians): {failure}")


if __name__ == "__main__":
    asyncio.run(main())
