"""Benchmark: the memory of one ``tokentrace api`` replica holding the Redis view of N spans over 30 days (#25).

The view is written into a real ``redis-server`` as the workers leave it, through the view's own writer
(``tokentrace.view.writer.Materializer``): per source partition, minute entries for the fine retention (48h)
and hour entries before it, each a ``BucketEntry`` whose state is built like ``bench/metrics_query.py`` builds
its state (a pool of minute buckets filled by ``BucketState.add`` of synthetic spans: 5 models x 3 providers
x 4 callers = 60 series, ``workflow`` with 6 values, errors, timeouts, eval scores, latencies; hours are merges
of 60 of them), plus each partition's meta entry (its span count). A real ``tokentrace api`` (with a
single-broker Kafka for its producer and lag watch) then syncs the whole view on its first query.

Measured: the first ``/metrics?window=30d`` (the whole sync included), a few warm queries, and the replica's
RSS minus an empty replica's (same flags, an empty Redis database), plus its peak RSS (``VmHWM``). ``--against
REV`` (default ``6e05140``, main before the replica kept its copies frozen) runs the same replica from that
revision's Python files (bench/benchkit/variants.py) over the same view.

    .venv/bin/python bench/replica_memory.py [--spans 2000000] [--partitions 4] [--against REV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
from benchkit.procfs import code, peak_rss_mib
from benchkit.server import machine, percentile
from benchkit.state import hour_blobs_of, minute_states
from benchkit.topics import create_topic
from benchkit.variants import export_revision, link_tree

from tokentrace.config import Config, timeline_settings
from tokentrace.core.buckets import BucketState
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, Timeline
from tokentrace.devcluster.kafka import KafkaCluster
from tokentrace.devcluster.procs import ServerProcess, free_ports
from tokentrace.devcluster.redis import RedisServer
from tokentrace.view.keys import DEFAULT_PREFIX, Keys
from tokentrace.view.schema import (
    STATE_SCHEMA,
    BucketEntry,
    PartitionMeta,
    bucket_key,
    encode_entry,
    hour_key,
    meta_key,
)
from tokentrace.view.writer import Materializer, Pending

QUERIES = [
    "/metrics?window=30d",
    "/metrics?window=30d&groupby=model",
    "/metrics?window=30d&groupby=workflow",
    "/metrics?window=1h",
]


async def write_view(redis_url: str, total_spans: int, partitions: int, pool: int, seed: int) -> tuple[int, str]:
    """Write the view of ``total_spans`` spans over the retention, split evenly over ``partitions``; returns
    the spans it counts and a line describing it."""
    rng = random.Random(seed)
    settings = timeline_settings(Config())
    now = now_ms()
    # Retention as it will be in a quarter of an hour, so no bucket retires while the benchmark runs.
    oldest = Timeline(settings).oldest_allowed_ms(now + 15 * MINUTE_MS)
    current = now - now % MINUTE_MS
    minutes = (current - oldest) // MINUTE_MS + 1
    per_bucket = max(1, total_spans // minutes // partitions)  # a minute's spans in one partition
    fine_cutoff = now - settings.fine_retention_ms
    fine_from = fine_cutoff - fine_cutoff % HOUR_MS  # the workers fold every minute before this hour
    minute_pool = minute_states(rng, per_bucket, pool, now, settings.caps)
    minute_blobs = [msgspec.msgpack.encode(state) for state in minute_pool]
    hour_blobs = hour_blobs_of(minute_pool)
    decode = msgspec.msgpack.Decoder(BucketState).decode

    materializer = Materializer(redis_url, Keys(DEFAULT_PREFIX, STATE_SCHEMA), 7 * 86_400_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    counted = fine = coarse = 0
    size = 0
    try:
        await materializer.check_epoch()
        for partition in range(partitions):
            offset = spans = 0
            start, index = oldest, partition * 13
            batch: list[Pending] = []
            while start <= current:
                offset += 1
                if start < fine_from:
                    key, blob, step, n = hour_key(partition, start), hour_blobs[index % pool], HOUR_MS, 60 * per_bucket
                    coarse += 1
                else:
                    key, blob, step, n = bucket_key(partition, start), minute_blobs[index % pool], MINUTE_MS, per_bucket
                    fine += 1
                data = encode_entry(BucketEntry(offset, decode(blob)))
                size += len(data)
                batch.append((key, offset, data))
                spans += n
                start += step
                index += 1
                if len(batch) >= 500:
                    await _drain(materializer, batch)
                    batch = []
            meta = PartitionMeta(offset=offset, messages=offset, spans=spans)
            batch.append((meta_key(partition), offset, encode_entry(meta)))
            await _drain(materializer, batch)
            counted += spans
    finally:
        writer.cancel()
        await materializer.close()
    described = (
        f"view: {counted:,} spans over the 30-day retention in {partitions} partitions; {per_bucket} spans a "
        f"minute a partition; {fine:,} minute entries (48h) + {coarse:,} hour entries; 60 series (5 models x 3 "
        f"providers x 4 callers) and `workflow` (6 values) per bucket; {size / 2**20:.1f} MiB of entries"
    )
    return counted, described


async def _drain(materializer: Materializer, batch: list[Pending]) -> None:
    materializer.submit(batch)
    for _ in range(60_000):
        if materializer.idle:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("the view's writer did not drain in 5 minutes")


class Replica:
    """``tokentrace api`` on a free port; ``pythonpath`` first on its import path (another revision's code)."""

    def __init__(self, label: str, work: Path, bootstrap: str, redis_url: str, topic: str, pythonpath: Path | None):
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "tokentrace", "api", "--bootstrap-servers", bootstrap, "--topic", topic]
        argv += ["--redis-url", redis_url, "--addr", f"127.0.0.1:{self.port}"]
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        # ``python -m`` puts the working directory first on the import path: not a checkout.
        self.process = ServerProcess(label, argv, work / f"{label}.log", cwd=work, env=env)
        self.process.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not self.process.running:
                raise RuntimeError(f"replica exited: {self.process.log_tail(40)}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5):
                    return
            except urllib.error.HTTPError:
                return  # it answers (a 503 while the view is empty or the lag unknown is fine here)
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"replica not answering: {self.process.log_tail(40)}")

    def get(self, target: str) -> tuple[float, dict[str, object]]:
        began = time.perf_counter()
        with urllib.request.urlopen(f"{self.url}{target}", timeout=600) as response:
            body = json.loads(response.read())
        return time.perf_counter() - began, body

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def peak_mib(self) -> float:
        return peak_rss_mib(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        if not self.process.wait(30):
            self.process.kill()


def measure(
    label: str,
    work: Path,
    kafka: KafkaCluster,
    redis: RedisServer,
    topic: str,
    path: Path | None,
    spans: int,
    requests: int,
) -> dict[str, float]:
    figures: dict[str, float] = {}

    def say(line: str) -> None:
        print(f"[{label}] {line}", flush=True)

    empty_url = redis.url.rsplit("/", 1)[0] + "/1"  # another database: an empty view
    empty = Replica(f"empty-{label}", work, kafka.bootstrap, empty_url, topic, path)
    try:
        empty.get(QUERIES[0])
        time.sleep(1.0)
        figures["empty_mib"] = empty.rss_mib()
    finally:
        empty.stop()
    replica = Replica(label, work, kafka.bootstrap, redis.url, topic, path)
    try:
        first, body = replica.get(QUERIES[0])
        figures["first_ms"] = first * 1000
        say(f"first `{QUERIES[0]}` (the whole sync): {first * 1000:,.0f} ms; span_count {body['span_count']:,}")
        if body["span_count"] != spans:
            raise RuntimeError(f"the replica counts {body['span_count']:,} spans, the view {spans:,}")
        for target in QUERIES:
            cold = replica.get(target)[0] * 1000
            timed = sorted(replica.get(target)[0] * 1000 for _ in range(requests))
            figures[f"p50 {target}"] = percentile(timed, 0.5)
            say(
                f"`{target}`: first {cold:,.0f} ms, then p50 {percentile(timed, 0.5):.1f} ms, "
                f"p99 {percentile(timed, 0.99):.1f} ms ({requests} requests)"
            )
        time.sleep(1.0)
        figures["rss_mib"] = replica.rss_mib()
        figures["state_mib"] = figures["rss_mib"] - figures["empty_mib"]
        figures["peak_mib"] = replica.peak_mib() - figures["empty_mib"]
        say(
            f"RSS {figures['rss_mib']:.0f} MiB vs {figures['empty_mib']:.0f} MiB empty: the view takes "
            f"{figures['state_mib']:.0f} MiB (peak {figures['peak_mib']:.0f} MiB above the empty replica)"
        )
    finally:
        replica.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=4, help="source partitions (the topic's, by default 4)")
    parser.add_argument("--pool", type=int, default=48, help="distinct minute (and hour) buckets to copy from")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per query")
    parser.add_argument("--against", default="6e05140", help="also measure this git revision's replica ('': none)")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {machine()} · at {code()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tokentrace-replica-") as tmp:
        work = Path(tmp)
        flavours: list[tuple[str, Path | None]] = [("this-tree", None)]
        if args.against:
            source = export_revision(args.against, work / "source")
            flavours.insert(0, (f"baseline-{args.against}", link_tree(source, work / "path")))
        with RedisServer() as redis, KafkaCluster(1) as kafka:
            topic = asyncio.run(create_topic(kafka, "replica-memory", args.partitions))
            began = time.perf_counter()
            spans, described = asyncio.run(write_view(redis.url, args.spans, args.partitions, args.pool, seed=7))
            print(f"{described}; written in {time.perf_counter() - began:.1f} s", flush=True)
            with redis.client() as client:
                print(f"redis-server: {int(client.info('memory')['used_memory']) / 2**20:,.0f} MiB used", flush=True)
            results = {
                label: measure(label, work, kafka, redis, topic, path, spans, args.requests) for label, path in flavours
            }
    rows = [
        ("view's RSS on the replica (MiB)", "state_mib"),
        ("peak RSS above the empty replica (MiB)", "peak_mib"),
        ("first /metrics?window=30d, sync included (ms)", "first_ms"),
        *((f"p50 {q} (ms)", f"p50 {q}") for q in QUERIES),
    ]
    print()
    print("| measure | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for name, key in rows:
        print(f"| {name} | " + " | ".join(f"{f.get(key, float('nan')):,.1f}" for f in results.values()) + " |")


if __name__ == "__main__":
    main()
