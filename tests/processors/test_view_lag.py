"""The view's lag behind the span topic: /health's queue_depth and the tokentrace_view_lag_messages gauge.

Spans on the topic with no worker running are all lag (in messages); once a worker has counted them, the
lag is 0 on every partition, in the store, in /health and in /metrics/prometheus of an API replica.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.infra.kafka import KafkaCluster
from tests.processors.conftest import MakeAPI
from tests.processors.harness import Workers, make_spans, produce, read_topic, wait_counted
from tokentrace.api.stores.redis_store import LAG_GAUGE, RedisStore

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


async def _messages_per_partition(bootstrap: str, topic: str) -> dict[int, int]:
    counts = dict.fromkeys(range(4), 0)
    async for record in read_topic(bootstrap, topic):
        counts[record.partition] += 1
    return counts


async def _scrape_lag(api: Any) -> tuple[dict[str, float], int]:
    """The gauge's samples by partition and /health's queue_depth, as a replica serves them."""
    text = await (await api.get("/metrics/prometheus")).text()
    samples = {
        sample.labels["partition"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == LAG_GAUGE and family.type == "gauge"
        for sample in family.samples
    }
    health = await (await api.get("/health")).json()
    return samples, health["queue_depth"]


async def test_the_backlog_is_lag_until_a_worker_counts_it(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, store: RedisStore, make_api: MakeAPI
) -> None:
    spans = make_spans(3_000, random.Random(41), spread_ms=5 * 60_000)
    await produce(kafka_broker.bootstrap, topic, spans, batch=100)
    messages = await _messages_per_partition(kafka_broker.bootstrap, topic)
    assert sum(messages.values()) >= 30

    assert await store.refresh_lag() == messages  # nothing counted: every message is lag
    assert (await store.health()).queue_depth == sum(messages.values())
    api = await make_api()
    deadline = time.monotonic() + 15
    while (scraped := await _scrape_lag(api)) != (
        {str(p): float(n) for p, n in messages.items()},
        sum(messages.values()),
    ):
        assert time.monotonic() < deadline, scraped
        await asyncio.sleep(0.25)

    workers.start()
    await wait_counted(store, len(spans), 60, workers)
    assert await store.refresh_lag() == dict.fromkeys(range(4), 0)
    assert (await store.health()).queue_depth == 0
    deadline = time.monotonic() + 15
    while (scraped := await _scrape_lag(api)) != ({str(p): 0.0 for p in range(4)}, 0):
        assert time.monotonic() < deadline, scraped
        await asyncio.sleep(0.25)
