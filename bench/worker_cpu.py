"""Where one worker's time goes: spans/s over a backlog, and the CPU each process used meanwhile.

Fills a 4-partition topic with ``--spans`` spans in ``--batch``-span messages, starts one ``tokentrace worker``
(fresh group and Redis prefix) per ``--fetch-bytes`` value given, and from the first span counted in the
view to the last prints the rate, the CPU seconds of the worker, the broker, redis-server and this script
(share of one core), the worker's peak RSS, and the busiest Redis commands (``INFO commandstats``: the
trace index's ``HSET``/``EXPIRE``/``ZADD`` run inside ``EVALSHA``) and how much Redis memory grew. A worker well under 100 % of a core is
waiting for something; that is how the fetch size was found (bench/RESULTS.md).

Run: ``.venv/bin/python bench/worker_cpu.py --fetch-bytes 1048576 8388608``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from processor_throughput import cpu_seconds

from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer
from tests.processors.harness import Workers, make_spans, produce
from tokentrace.api.stores.redis_store import RedisStore


def peak_rss_mib(pid: int | None) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def one_run(
    kafka: KafkaCluster, redis: RedisServer, topic: str, spans: int, fetch: int, logs: Path, run: int
) -> None:
    prefix = f"cpu{run}-{topic}:"
    client = aioredis.Redis.from_url(redis.url)
    await client.config_resetstat()
    memory_before = (await client.info("memory"))["used_memory"]
    workers = Workers(
        kafka.bootstrap,
        redis.url,
        topic,
        logs,
        app_id=f"cpu{run}-{topic}",
        extra_args=["--prefix", prefix, "--fetch-bytes", str(fetch)],
    )
    store = RedisStore(redis.url, kafka.bootstrap, topic, prefix=prefix)
    await store.open()
    try:
        worker = workers.start()
        pids = {"worker": worker.pid, "broker": kafka.nodes[0].process.pid, "redis-server": redis.process.pid}
        counted = first_count = 0
        began = 0.0
        before: dict[str, float] = {}
        deadline = time.monotonic() + 600
        while counted < spans and time.monotonic() < deadline:
            counted = (await store.health()).span_count
            if counted and not before:
                began, first_count = time.perf_counter(), counted
                before = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"script": time.process_time()}
            await asyncio.sleep(0.2)
        wall = time.perf_counter() - began
        after = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"script": time.process_time()}
        print(f"--fetch-bytes {fetch}: {(counted - first_count) / wall:,.0f} spans/s over {wall:.1f} s", flush=True)
        for name in after:
            used = after[name] - before[name]
            print(f"  {name}: {used:.2f} CPU s ({100 * used / wall:.0f} % of a core)")
        print(f"  worker peak RSS {peak_rss_mib(worker.pid):.0f} MiB")
        grown = (await client.info("memory"))["used_memory"] - memory_before
        print(
            f"  redis used_memory +{grown / 2**20:.0f} MiB ({grown / spans:.0f} bytes per span: view and trace index)"
        )
        stats = await client.info("commandstats")
        busiest = sorted(stats.items(), key=lambda item: -item[1]["usec"])[:4]
        print("  redis: " + ", ".join(f"{k[8:]} {v['calls']} calls {v['usec'] / 1e6:.2f} s" for k, v in busiest))
    finally:
        workers.stop_all()
        await store.close()
        await client.aclose()


async def main(spans: int, batch: int, fetches: list[int]) -> None:
    logs = Path(tempfile.mkdtemp(prefix="tokentrace-worker-cpu-"))
    with KafkaCluster(1) as kafka, RedisServer() as redis:
        topic = kafka.create_topic("cpu", partitions=4)
        await produce(kafka.bootstrap, topic, make_spans(spans, random.Random(1), spread_ms=60_000), batch=batch)
        print(f"{spans:,} spans in {batch}-span messages, 4 partitions; load average {os.getloadavg()[0]:.2f}")
        for run, fetch in enumerate(fetches):
            await one_run(kafka, redis, topic, spans, fetch, logs, run)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="spans per Kafka message")
    parser.add_argument("--fetch-bytes", type=int, nargs="+", default=[1_048_576, 8_388_608])
    args = parser.parse_args()
    asyncio.run(main(args.spans, args.batch, args.fetch_bytes))
