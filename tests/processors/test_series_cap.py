"""Spans an application produces straight to Kafka (the SDK's ``KafkaTransport``) never pass an API's
``LabelCaps``: the workers cap the series of each (partition, bucket) at ``aggregation.max_series``, the rest
counting in the overflow series. Workers are killed (-9) while the flood streams, so partitions are replayed
and taken over by another worker; the view must still be exactly what one pass over each partition's messages
gives (``Applier`` over the topic, the brute-force replay), with totals equal to a recount of the topic."""

from __future__ import annotations

import asyncio
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from benchkit.topics import read_topic

from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer
from tests.processors.harness import Workers, assert_view_is_recount, wait_counted
from tokentrace.api.app import create_app
from tokentrace.api.distributed import distributed_context
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.config import load_config, milliseconds, price_table, timeline_settings
from tokentrace.core.buckets import OVERFLOW_SERIES, BucketState
from tokentrace.core.span import Span, new_id
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.processors.state import Applier
from tokentrace.producers.transports.kafka import KafkaTransport
from tokentrace.view.schema import BucketEntry, Entry, decode_entry, parse_key

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

CAP = 3
MODELS = 400


def _flood(count: int, rng: random.Random) -> list[Span]:
    """``count`` single-span traces of ``MODELS`` distinct model names over the last three minutes."""
    now = now_ms()
    return [
        Span(
            trace_id=new_id(),
            model=f"flood-{i % MODELS}",
            provider=rng.choice(("openai", "anthropic")),
            caller=rng.choice(("chat", "search")),
            prompt_tokens=rng.randrange(1, 4000),
            comp_tokens=rng.randrange(0, 800),
            cost_usd=round(rng.random() / 100, 7),
            latency_ms=rng.randrange(20, 9000),
            started_at=format_ms(now - rng.randrange(0, 3 * 60_000)),
            attributes={"workflow": rng.choice(("ingest", "answer"))},
        )
        for i in range(count)
    ]


async def _replayed_once(config_path: Path, topic: str, bootstrap: str) -> dict[tuple[int, bytes], Entry]:
    """Every partition's entries as one pass of ``Applier`` over its messages, in order, gives them."""
    config = load_config(config_path)
    applier = Applier(timeline_settings(config), price_table(config), milliseconds(config.aggregation.max_future_skew))
    by_partition: dict[int, list[tuple[int, int, bytes | None]]] = defaultdict(list)
    async for record in read_topic(bootstrap, topic):
        by_partition[record.partition].append((record.offset, record.timestamp, record.value))
    out: dict[tuple[int, bytes], Entry] = {}
    for partition, messages in by_partition.items():
        entries: dict[bytes, Entry] = {}
        applier.apply_many(entries, partition, messages)
        out.update({(partition, key): entry for key, entry in entries.items()})
    return out


async def _moved(store: RedisStore, since: int, within_s: float = 60.0) -> int:
    """The view's span count once it is past ``since``."""
    for _ in range(int(within_s / 0.2)):
        counted = (await store.health()).span_count
        if counted > since:
            return counted
        await asyncio.sleep(0.2)
    raise AssertionError(f"the view did not count past {since} spans in {within_s} s")


def _view_entries(redis_server: RedisServer, store: RedisStore) -> dict[tuple[int, bytes], BucketEntry]:
    """The view's bucket entries, as the workers wrote them to Redis."""
    out: dict[tuple[int, bytes], BucketEntry] = {}
    prefix = store.keys.entry("")
    with redis_server.client() as client:
        for name in client.scan_iter(match=f"{prefix}*"):
            data = client.hget(name, "d")
            member = name.decode()[len(prefix) :].encode()
            partition, start = parse_key(member)
            if data is None or start is None:
                continue
            entry = decode_entry(data)
            if isinstance(entry, BucketEntry):
                out[(partition, member)] = entry
    return out


def _samples(exposition: str, family: str) -> dict[str, float]:
    """The samples of ``family`` in a text exposition, by their name and labels."""
    return {m[1]: float(m[2]) for m in re.finditer(rf"^({family}\{{[^}}]*\}}) (\S+)$", exposition, re.M)}


def _labels(sample: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', sample)
    assert found is not None, sample
    return found.group(1)


async def test_a_kafka_flood_is_capped_per_bucket_exactly_and_replays_decide_alike(
    kafka_broker: KafkaCluster,
    redis_server: RedisServer,
    topic: str,
    workers: Workers,
    store: RedisStore,
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    config_path = tmp_path / "tokentrace.yml"
    config_path.write_text(
        f"kafka: {{bootstrap_servers: '{kafka_broker.bootstrap}', topic: '{topic}', partitions: 4}}\n"
        f"redis: {{url: '{redis_server.url}'}}\n"
        f"aggregation: {{max_series: {CAP}}}\n"
    )
    workers.extra_args = ["--config", str(config_path)]
    workers.start()
    workers.start()
    spans = _flood(16_000, random.Random(11))
    rng = random.Random(12)
    transport = KafkaTransport(kafka_broker.bootstrap, topic=topic, linger_ms=5, max_batch_spans=50)
    try:
        kills, counted = 0, 0
        for at in range(0, len(spans), 400):
            transport.send(spans[at : at + 400])
            await asyncio.sleep(0.2)
            if at and at % 3200 == 0:
                # Once the view has moved since the last kill (a worker is applying), SIGKILL one: its partitions
                # are replayed from their committed offsets by the other, or by the new one.
                counted = await _moved(store, counted)
                rng.choice(workers.alive()).kill()
                kills += 1
                workers.start()
        await asyncio.to_thread(transport.flush, 60)
    finally:
        await asyncio.to_thread(transport.close)
    assert kills >= 4
    await wait_counted(store, len(spans), 150, workers)
    await assert_view_is_recount(kafka_broker.bootstrap, topic, store)  # spans, tokens, cost: exact

    # The view holds, per (partition, bucket), at most CAP series and the overflow series, and is exactly what
    # one pass over each partition's messages decides: kills and takeovers changed no decision.
    expected = await _replayed_once(config_path, topic, kafka_broker.bootstrap)
    expected_buckets = {k: e for k, e in expected.items() if isinstance(e, BucketEntry)}
    view = _view_entries(redis_server, store)
    assert set(view) == set(expected_buckets)
    folded = 0
    for key, entry in view.items():
        state: BucketState = entry.state
        assert len(state.series) - (OVERFLOW_SERIES in state.series) <= CAP
        assert state == expected_buckets[key].state, key
        assert entry.offset == expected_buckets[key].offset
        folded += state.overflowed_series
    assert folded == sum(e.state.overflowed_series for e in expected_buckets.values())
    assert folded > len(spans) // 2  # 400 models, 3 kept per bucket: most spans fold

    # An API replica over that view: bounded label sets, exact counts, the folds counted.
    config = load_config(config_path)
    ctx = await distributed_context(config)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(ctx))
    try:
        response = await client.get("/metrics/prometheus")
        assert response.status == 200
        exposition = await response.text()
    finally:
        assert isinstance(ctx.store, RedisStore)
        await ctx.store.close()
    spans_total = _samples(exposition, "tokentrace_spans_total")
    assert sum(spans_total.values()) == len(spans)
    models = {_labels(sample, "model") for sample in spans_total}
    assert len(models) <= len(view) * CAP + 1 < MODELS
    assert "__overflow__" in models
    folded_samples = _samples(exposition, "tokentrace_folded_labels_total")
    assert folded_samples['tokentrace_folded_labels_total{label="series"}'] == folded
