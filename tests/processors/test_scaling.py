"""Tests 2 and 4: workers joining and leaving mid-stream; a broker of a 3-node cluster dying mid-stream."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer
from tests.processors.harness import (
    Workers,
    assert_view_is_recount,
    make_spans,
    produce,
    wait_counted,
)
from tokentrace.api.stores.redis_store import RedisStore

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


async def test_workers_joining_and_leaving_mid_stream_count_exactly(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, store: RedisStore
) -> None:
    spans = make_spans(40_000, random.Random(8), spread_ms=10 * 60_000)
    first, _ = workers.start(), workers.start()
    producing = asyncio.create_task(produce(kafka_broker.bootstrap, topic, spans, batch=100, rate=2500))
    await asyncio.sleep(5)
    workers.start()  # a third joins: partitions spread over three
    await asyncio.sleep(5)
    first.terminate()  # one leaves gracefully: its partitions move to the others
    await producing
    assert first.wait(20)
    await wait_counted(store, len(spans), 90, workers)
    await assert_view_is_recount(kafka_broker.bootstrap, topic, store)


async def test_a_worker_joining_during_a_backlog_takes_over_exactly(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, store: RedisStore
) -> None:
    """The benchmark's shape: a full topic, one worker takes every partition, a second joins a second later
    and takes half of them while the first is mid-way through its backlog."""
    spans = make_spans(100_000, random.Random(11), spread_ms=60_000)
    await produce(kafka_broker.bootstrap, topic, spans, batch=500)
    workers.start()
    await asyncio.sleep(1)
    workers.start()
    await wait_counted(store, len(spans), 90, workers)
    await assert_view_is_recount(kafka_broker.bootstrap, topic, store)


async def test_every_acknowledged_span_is_counted_when_a_broker_dies(
    kafka_cluster: KafkaCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    topic = kafka_cluster.create_topic("spans", partitions=4, replication=3, config={"min.insync.replicas": "2"})
    workers = Workers(
        kafka_cluster.bootstrap, redis_server.url, topic, tmp_path / "logs", extra_args=["--replication-factor", "3"]
    )
    store = RedisStore(redis_server.url, kafka_cluster.bootstrap, topic)
    await store.open()
    try:
        workers.start()
        spans = make_spans(30_000, random.Random(9), spread_ms=10 * 60_000)
        acked: list = []
        producing = asyncio.create_task(
            produce(kafka_cluster.bootstrap, topic, spans, batch=100, rate=2500, acked=acked)
        )
        await asyncio.sleep(5)
        kafka_cluster.kill(2)  # a broker dies: leaders move, the ISR shrinks to 2 (= min.insync.replicas)
        while not producing.done():
            if not workers.alive():  # a worker whose changelog write failed exits; run another
                workers.start()
            await asyncio.wait([producing], timeout=1)
        await producing
        assert len(acked) >= len(spans) * 0.9
        await wait_counted(store, len(acked), 120, workers, at_least=True)  # unacked sends may have landed too
        counted = set(await assert_view_is_recount(kafka_cluster.bootstrap, topic, store))
        assert {s.span_id for s in acked} <= counted
    finally:
        workers.stop_all()
        await store.close()
