"""Exactness probe: the benchmark's two-worker run, repeated; on a shortfall, where the view is short.

Fills a 4-partition topic with ``--spans`` spans, then runs bench/processor_throughput.py's two-worker
measurement (``benchkit.workers.workers_run``: one worker takes every partition, the second joins and takes half while the first is mid-way
through the backlog) ``--rounds`` times, each with a fresh consumer group and Redis prefix. When a round
counts fewer spans than the topic holds, it prints, per partition, the view's meta entry (offset, messages,
spans) beside a recount of the topic, so the missing message can be found in the workers' logs.

At the end it lists the holes the workers sought back over (see ``_Worker._continues``): this probe found
that Faust acks messages its streams skip around a rebalance, so the committed offset passes a message
nobody counted, and that a seek back can be undone by a batch fetched before it (a stalled partition).

Run: ``.venv/bin/python bench/backlog_takeover.py [--rounds 10] [--spans 200000]`` (load the machine
meanwhile, e.g. with a busy loop on one core, to widen the timing windows; holes appear mostly under load).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

from benchkit.spans import make_spans
from benchkit.topics import create_topic, produce, read_topic
from benchkit.workers import workers_run

from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.codec import decode_wire
from tokentrace.devcluster.kafka import KafkaCluster
from tokentrace.devcluster.redis import RedisServer

PARTITIONS = 4


async def recount(bootstrap: str, topic: str) -> dict[int, dict[int, int]]:
    """Spans per message offset, per partition, read from the topic."""
    counts: dict[int, dict[int, int]] = {p: {} for p in range(PARTITIONS)}
    async for record in read_topic(bootstrap, topic, PARTITIONS):
        counts[record.partition][record.offset] = len(decode_wire(record.value or b""))
    return counts


async def main(rounds: int, spans: int, worker_args: list[str]) -> int:
    logs = Path(tempfile.mkdtemp(prefix="tokentrace-takeover-"))
    print(f"worker logs in {logs}", flush=True)
    short = 0
    with KafkaCluster(1) as kafka, RedisServer() as redis:
        topic = await create_topic(kafka, "takeover", PARTITIONS)
        await produce(kafka.bootstrap, topic, make_spans(spans, random.Random(1), spread_ms=60_000), batch=500)
        counts = await recount(kafka.bootstrap, topic)
        for round_ in range(rounds):
            tag = f"t{round_}"
            try:
                rate = (await workers_run(kafka, redis, topic, 2, spans, logs, tag, worker_args, PARTITIONS)).rate
                print(f"round {round_}: exact, {rate:,.0f} spans/s", flush=True)
                continue
            except RuntimeError as exc:
                short += 1
                print(f"round {round_}: SHORT: {exc}", flush=True)
            store = RedisStore(redis.url, kafka.bootstrap, topic, prefix=f"bench2{tag}-{topic}:")
            await store.open(publish=False)
            try:
                await store.sync()
                for partition, expected in counts.items():
                    meta = store.view.meta.get(partition)  # the view's per-partition counters
                    seen = (meta.offset, meta.messages, meta.spans) if meta else None
                    print(
                        f"  partition {partition}: view (offset, messages, spans) {seen}; "
                        f"topic {len(expected)} messages, {sum(expected.values())} spans",
                        flush=True,
                    )
            finally:
                await store.close()
    print(f"{short} of {rounds} rounds short", flush=True)
    report_holes(logs)
    return 1 if short else 0


def report_holes(logs: Path) -> None:
    """Print the workers' hole lines: offsets Faust's position had passed without them being counted."""
    lines = [line for log in sorted(logs.glob("worker-*.log")) for line in log.read_text().splitlines()]
    holes = [line for line in lines if "seeking back to" in line]
    again = [line for line in lines if "seeking back again" in line]
    print(f"holes the workers sought back over: {len(holes)}; seeks repeated because a hole persisted: {len(again)}")
    for line in holes + again:
        print(f"  {line.strip()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument(
        "--fetch-bytes", type=int, help="the workers' --fetch-bytes (1048576, Faust's default, made holes likelier)"
    )
    args = parser.parse_args()
    worker_args = ["--fetch-bytes", str(args.fetch_bytes)] if args.fetch_bytes else []
    sys.exit(asyncio.run(main(args.rounds, args.spans, worker_args)))
