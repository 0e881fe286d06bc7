"""Processor throughput: one ``tokentrace worker`` (and two) against a plain aiokafka consumer baseline.

Starts a single-node Kafka broker and a redis-server (tests/infra), fills a 4-partition topic with
``--spans`` spans in ``--batch``-span wire messages (started within the last minute, as live traffic is),
then measures, on the same topic in the same run:

* baseline: an aiokafka consumer that reads every message and decodes it with msgspec (``decode_wire``);
* one worker: from its first counted span to the last, read from the Redis view's exact span counter
  (the worker's start-up and recovery are left out, the changelog writes, acks and Redis writes are in);
* two workers of a fresh consumer group on the same topic (scaling, on however many cores there are);
* freshness: at a steady ``--fresh-rate`` through one worker, the time from the broker's ack of a batch
  (the moment ``POST /spans`` answers 202) until a ``/metrics`` query counts it (p50/p99).

Run: ``.venv/bin/python bench/processor_throughput.py [--spans 200000] [--batch 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer
from tests.processors.harness import Workers, make_spans, produce
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.codec import decode_wire
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import total


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


async def workers_rate(
    kafka: KafkaCluster, redis: RedisServer, topic: str, count: int, total: int, logs: Path
) -> float:
    """Spans/s of ``count`` workers (fresh group and Redis prefix), first counted span to the last."""
    prefix = f"bench{count}-{topic}:"
    workers = Workers(
        kafka.bootstrap, redis.url, topic, logs, app_id=f"bench-{count}-{topic}", extra_args=["--prefix", prefix]
    )
    store = RedisStore(redis.url, kafka.bootstrap, topic, prefix=prefix)
    await store.open()
    try:
        for _ in range(count):
            workers.start()
        first = last = None
        counted = 0
        deadline = time.monotonic() + 600
        while counted < total and time.monotonic() < deadline:
            counted = (await store.health()).span_count
            now = time.perf_counter()
            if counted and first is None:
                first, first_count = now, counted
            last = now
            await asyncio.sleep(0.02)
        assert counted == total, (counted, total, workers.logs())
        assert first is not None and last is not None
        return (total - first_count) / (last - first)
    finally:
        workers.stop_all()
        await store.close()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


async def freshness(kafka: KafkaCluster, redis: RedisServer, rate: float, seconds: float, logs: Path) -> list[float]:
    """Seconds from the broker's ack of a batch (what POST /spans answers 202 on) to its spans being
    counted in a ``/metrics`` query, at a steady ``rate`` spans/s through one worker."""
    topic = kafka.create_topic("fresh", partitions=4)
    prefix = f"fresh-{topic}:"
    workers = Workers(kafka.bootstrap, redis.url, topic, logs, app_id=f"fresh-{topic}", extra_args=["--prefix", prefix])
    writer = RedisStore(redis.url, kafka.bootstrap, topic, prefix=prefix)
    reader = RedisStore(redis.url, kafka.bootstrap, topic, prefix=prefix)
    await writer.open()
    await reader.open()
    workers.start()
    try:
        await writer.ingest(make_spans(1, random.Random(0), spread_ms=1))
        for _ in range(600):  # until the worker is up
            if (await reader.health()).span_count:
                break
            await asyncio.sleep(0.1)
        acked: list[tuple[float, int]] = []
        latencies: list[float] = []
        sent = 1
        done = asyncio.Event()

        async def poll() -> None:
            i = 0
            while not done.is_set() or i < len(acked):
                now = now_ms()
                counted = total(await reader.query(now - 3_600_000, now + 60_000, None, {})).count
                seen = time.perf_counter()
                while i < len(acked) and acked[i][1] <= counted:
                    latencies.append(seen - acked[i][0])
                    i += 1
                await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll())
        batch = 100
        rng = random.Random(2)
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            spans = make_spans(batch, rng, spread_ms=1000)
            await writer.ingest(spans)  # returns once Kafka acked: the moment POST /spans answers 202
            sent += batch
            acked.append((time.perf_counter(), sent))
            ahead = (sent - 1) / rate - (time.perf_counter() - began)
            if ahead > 0:
                await asyncio.sleep(ahead)
        done.set()
        await asyncio.wait_for(poller, 120)
        return sorted(latencies)
    finally:
        workers.stop_all()
        await writer.close()
        await reader.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="spans per Kafka message")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--fresh-rate", type=float, default=5000, help="spans/s for the freshness run")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="tokentrace-bench-"))
    with KafkaCluster(1) as kafka, RedisServer() as redis:
        topic = kafka.create_topic("bench", partitions=args.partitions)
        spans = make_spans(args.spans, random.Random(1), spread_ms=60_000)
        await produce(kafka.bootstrap, topic, spans, batch=args.batch)
        base = await baseline(kafka.bootstrap, topic, args.partitions, args.spans)
        one = await workers_rate(kafka, redis, topic, 1, args.spans, logs)
        two = await workers_rate(kafka, redis, topic, 2, args.spans, logs)
        fresh = await freshness(kafka, redis, args.fresh_rate, 30, logs)
    print(f"machine: {_cpu()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    print(
        f"{args.spans} spans, {args.batch}-span messages, {args.partitions} partitions, broker + Redis on the same host"
    )
    print("| pipeline | spans/s | vs baseline |")
    print("|---|---|---|")
    print(f"| aiokafka consumer + msgspec decode (baseline) | {base:,.0f} | 1.00x |")
    print(f"| 1 tokentrace worker (Faust, exact tables, changelog acks, Redis view) | {one:,.0f} | {one / base:.2f}x |")
    print(f"| 2 tokentrace workers | {two:,.0f} | {two / base:.2f}x (scaling {two / one:.2f}x) |")
    p50, p99 = fresh[len(fresh) // 2], fresh[int(len(fresh) * 0.99)]
    print(f"freshness at {args.fresh_rate:,.0f} spans/s (broker ack -> counted in /metrics), {len(fresh)} batches:")
    print(f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {fresh[-1]:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
