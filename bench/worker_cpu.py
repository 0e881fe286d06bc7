"""Where one worker's time goes: spans/s over a backlog, and the CPU each process used meanwhile.

Fills a 4-partition topic with ``--spans`` spans in ``--batch``-span messages, starts one ``tokentrace worker``
(fresh group and Redis prefix) per ``--fetch-bytes`` value given, and from the first span counted in the
view to the last prints the rate, the CPU seconds of the worker, the broker, redis-server and this script
(share of one core), the worker's peak RSS, and the busiest Redis commands (``INFO commandstats``: the
trace index is ``APPEND`` and ``ZADD``, the view's entries ``EVALSHA``) and how much Redis memory grew. A worker well under 100 % of a core is
waiting for something; that is how the fetch size was found (bench/RESULTS.md).

``--against REV`` (repeatable) runs the same measurement with the worker importing the code of a git revision
(or a source tree), alternating with the working tree for ``--rounds`` rounds over the same backlog, and
ends with each variant's median worker CPU per span and rate beside the first variant's: the machine is
shared, so only figures measured in the same run compare.

Run: ``.venv/bin/python bench/worker_cpu.py --fetch-bytes 1048576 8388608``
or ``.venv/bin/python bench/worker_cpu.py --fetch-bytes 8388608 --rounds 3 --against HEAD``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from benchkit.procfs import cpu_seconds, peak_rss_mib
from benchkit.spans import make_spans
from benchkit.topics import create_topic, produce
from benchkit.variants import add_against_option, link_tree, variant_source
from benchkit.workers import ViewCount, Workers

from tokentrace.devcluster.kafka import KafkaCluster
from tokentrace.devcluster.redis import RedisServer


async def one_run(
    kafka: KafkaCluster,
    redis: RedisServer,
    topic: str,
    spans: int,
    fetch: int,
    logs: Path,
    run: int,
) -> tuple[float, float]:
    """One worker over the whole backlog; prints what it measured and returns (spans/s, worker CPU µs per
    span). The worker runs in ``logs``: ``python -m`` puts its working directory first on ``sys.path``, and a
    checkout's ``tokentrace/`` there would win over the variant PYTHONPATH names."""
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
        cwd=logs,
    )
    view = ViewCount(redis.url, prefix, 4)
    try:
        worker = workers.start()
        pids = {"worker": worker.pid, "broker": kafka.nodes[0].process.pid, "redis-server": redis.process.pid}
        counted = first_count = 0
        began = 0.0
        before: dict[str, float] = {}
        deadline = time.monotonic() + 600
        while counted < spans and time.monotonic() < deadline:
            counted = await view.spans()
            if counted and not before:
                began, first_count = time.perf_counter(), counted
                before = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"script": time.process_time()}
            await asyncio.sleep(0.2)
        wall = time.perf_counter() - began
        after = {name: cpu_seconds(pid) for name, pid in pids.items()} | {"script": time.process_time()}
        rate = (counted - first_count) / wall
        print(f"--fetch-bytes {fetch}: {rate:,.0f} spans/s over {wall:.1f} s", flush=True)
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
        worker_us = 1e6 * (after["worker"] - before["worker"]) / max(1, counted - first_count)
        print(f"  worker {worker_us:.1f} CPU µs per span")
        built = [line for line in worker.log_path.read_text(errors="replace").splitlines() if "code from" in line]
        print(f"  worker ran {built[-1].split('code from ', 1)[1] if built else 'code not logged (an older build)'}")
        return rate, worker_us
    finally:
        workers.stop_all()
        await view.close()
        await client.aclose()


def worker_paths(against: list[str]) -> dict[str, str | None]:
    """The PYTHONPATH of each variant's worker: the worker runs ``python -m tokentrace worker``, so
    PYTHONPATH decides which code it imports (the working tree's: the environment's own)."""
    sources = Path(tempfile.mkdtemp(prefix="tokentrace-worker-cpu-src-"))
    variants: dict[str, str | None] = {"working tree": os.environ.get("PYTHONPATH")}
    for index, name in enumerate(against):
        source = variant_source(name, sources / f"src-{index}")
        variants[name] = str(link_tree(source, sources / f"path-{index}"))
    return variants


async def main(spans: int, batch: int, fetches: list[int], rounds: int, variants: dict[str, str | None]) -> None:
    logs = Path(tempfile.mkdtemp(prefix="tokentrace-worker-cpu-"))
    figures: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with KafkaCluster(1) as kafka, RedisServer() as redis:
        topic = await create_topic(kafka, "cpu", 4)
        await produce(kafka.bootstrap, topic, make_spans(spans, random.Random(1), spread_ms=60_000), batch=batch)
        print(f"{spans:,} spans in {batch}-span messages, 4 partitions; load average {os.getloadavg()[0]:.2f}")
        run = 0
        for index in range(rounds):
            order = list(variants) if index % 2 == 0 else list(reversed(variants))
            for name in order:
                for fetch in fetches:
                    print(f"round {index + 1}, {name}:")
                    _use_pythonpath(variants[name])
                    figures.setdefault((name, fetch), []).append(
                        await one_run(kafka, redis, topic, spans, fetch, logs, run)
                    )
                    run += 1
    _use_pythonpath(variants["working tree"])
    if len(variants) > 1 or rounds > 1:
        print("\n".join(summary(figures, list(variants), fetches)))


def _use_pythonpath(path: str | None) -> None:
    if path is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = path


def summary(
    figures: dict[tuple[str, int], list[tuple[float, float]]], names: list[str], fetches: list[int]
) -> list[str]:
    """Medians per variant and fetch size, and their ratio to the first variant's (Markdown)."""
    base = names[0]
    lines = [
        "",
        "| variant | --fetch-bytes | spans/s | worker CPU µs/span | rate / first | CPU per span / first |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fetch in fetches:
        base_rate = statistics.median(r for r, _ in figures[(base, fetch)])
        base_cpu = statistics.median(c for _, c in figures[(base, fetch)])
        for name in names:
            rate = statistics.median(r for r, _ in figures[(name, fetch)])
            cpu = statistics.median(c for _, c in figures[(name, fetch)])
            lines.append(
                f"| `{name}` | {fetch} | {rate:,.0f} | {cpu:.1f} | {rate / base_rate:.2f} | {cpu / base_cpu:.2f} |"
            )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="spans per Kafka message")
    parser.add_argument("--fetch-bytes", type=int, nargs="+", default=[1_048_576, 8_388_608])
    parser.add_argument("--rounds", type=int, default=1)
    add_against_option(parser)
    args = parser.parse_args()
    asyncio.run(main(args.spans, args.batch, args.fetch_bytes, args.rounds, worker_paths(args.against)))
