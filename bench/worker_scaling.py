"""Scaling from one worker to several when each worker has CPU of its own: every worker under a CPU quota.

On a machine with fewer cores than the deployment uses (here two, shared by the broker, redis-server, the
workers and this script) one worker already keeps the cores busy, so a second adds little: that is the
"unlimited" rows, what the whole machine allows. A deployment gives each worker its own CPU (a container's
CPU limit, a node per worker); this script does that with a cgroup CFS quota of ``--quota`` cores per worker
(``benchkit.quota``; the broker and redis-server stay unlimited) and measures 1..N workers on the same
backlog, each count in a fresh consumer group, the configurations in reverse order every other round, the
rate counted as bench/processor_throughput.py counts it (from the moment every worker is ready to the last
span in the Redis view; exact or reported as failed).

For a quota row to measure the workers and not the machine, the workers must be what holds the rate back:
the table gives the share of CFS periods in which the kernel throttled them (near 100 %: the quota was the
limit) and how many of the machine's cores were busy (well under all of them: Redis and the broker had room).

Run: ``.venv/bin/python bench/worker_scaling.py [--spans 600000] [--quota 0.4] [--workers 1 2] [--rounds 3]``
(needs root for the cgroup; see bench/benchkit/quota.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from benchkit.procfs import code, cpu_model, load
from benchkit.quota import CpuQuota, QuotaUnavailable
from benchkit.spans import make_spans
from benchkit.topics import create_topic, produce
from benchkit.workers import WorkersRun, workers_run

from tokentrace.devcluster.kafka import KafkaCluster
from tokentrace.devcluster.redis import RedisServer


@dataclass
class Runs:
    """The rounds of one (quota, worker count) configuration."""

    runs: list[WorkersRun] = field(default_factory=list)
    throttled: list[float] = field(default_factory=list)  # per run, the workers' mean share of throttled periods
    failures: list[str] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs) if self.runs else 0.0


def _label(quota: float | None) -> str:
    return "unlimited" if quota is None else f"{quota:g} core each"


async def measure(
    kafka: KafkaCluster,
    redis: RedisServer,
    topic: str,
    args: argparse.Namespace,
    quota: float | None,
    count: int,
    tag: str,
    logs: Path,
    runs: Runs,
) -> None:
    groups: list[CpuQuota] = []

    def confine(pid: int) -> None:
        if quota is not None:
            groups.append(CpuQuota(quota))
            groups[-1].add(pid)

    try:
        run = await workers_run(
            kafka, redis, topic, count, args.spans, logs, tag, partitions=args.partitions, on_start=confine
        )
        runs.runs.append(run)
        if groups:
            runs.throttled.append(statistics.fmean(group.throttled() for group in groups))
        print(f"  {_label(quota)}, {count} worker(s): {run.rate:,.0f} spans/s", file=sys.stderr)
    except RuntimeError as exc:  # an inexact count: reported, left out of the medians
        runs.failures.append(str(exc))
        print(f"  FAILED {_label(quota)}, {count} worker(s): {exc}", file=sys.stderr)
    finally:
        for group in groups:
            group.close()


async def flush(redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis.url)
    try:
        before = (await client.info("memory"))["used_memory"]
        await client.flushall()
        print(f"  Redis emptied ({before / 2**20:,.0f} MiB)", file=sys.stderr)
    finally:
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=600_000)
    parser.add_argument("--batch", type=int, default=500, help="spans per Kafka message")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--quota", type=float, nargs="+", default=[0.4], help="cores per worker (one row each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-unlimited", action="store_true", help="skip the rows without a quota")
    parser.add_argument("--flush-redis", action="store_true", help="empty Redis before each run")
    args = parser.parse_args()
    try:
        CpuQuota(min(args.quota)).close()
    except QuotaUnavailable as exc:
        sys.exit(f"worker_scaling: {exc}")
    quotas: list[float | None] = [*args.quota] + ([] if args.no_unlimited else [None])
    logs = Path(tempfile.mkdtemp(prefix="tokentrace-scaling-"))
    load_before, commit, began = load(), code(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = {(quota, count): Runs() for quota in quotas for count in args.workers}
    with KafkaCluster(1) as kafka, RedisServer() as redis:
        topic = await create_topic(kafka, "scaling", args.partitions)
        await produce(kafka.bootstrap, topic, make_spans(args.spans, random.Random(1), spread_ms=60_000), args.batch)
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}:", file=sys.stderr)
            # Every other round in reverse: a run's place in the round (right after the backlog was written,
            # or after other runs) moved its rate by up to a fifth in either direction on this shared machine.
            order = list(enumerate(results))
            for index, (quota, count) in order if round_ % 2 else reversed(order):
                if args.flush_redis:
                    await flush(redis)
                await measure(
                    kafka, redis, topic, args, quota, count, f"r{round_}q{index}", logs, results[quota, count]
                )
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; {began}; Python {platform.python_version()}; "
        f"load average {load_before} before, {load()} after"
    )
    print(f"code: {commit}")
    print(
        f"{args.spans:,} spans, {args.batch}-span messages, {args.partitions} partitions, broker and redis-server on "
        f"the same host without a quota; median of {args.rounds} rounds; worker logs in {logs}"
    )
    print("| workers | CPU | spans/s (per round) | vs 1 worker | workers' CPU µs/span | throttled | cores busy |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for (quota, count), runs in results.items():
        one = results.get((quota, 1))
        base = one.median("rate") if one and one.runs else 0.0
        rate = runs.median("rate")
        per_round = ", ".join(f"{run.rate / 1000:,.0f}k" for run in runs.runs)
        throttled = f"{100 * statistics.median(runs.throttled):.0f} %" if runs.throttled else "-"
        print(
            f"| {count} | {_label(quota)} | **{rate:,.0f}** ({per_round}) | "
            f"{f'{rate / base:.2f}x' if base else 'n/a'} | {runs.median('cpu_us_per_span'):.1f} | {throttled} | "
            f"{runs.median('machine_busy_cores'):.2f} of {os.cpu_count()} |"
        )
    for (quota, count), runs in results.items():
        for failure in runs.failures:
            print(f"FAILED (not in the medians) {_label(quota)}, {count} worker(s): {failure}")


if __name__ == "__main__":
    asyncio.run(main())
