"""POST /spans in distributed mode: each request becomes one message (cut only by size) on one partition."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.infra.kafka import KafkaCluster
from tests.processors.harness import make_spans, read_topic
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.codec import decode_wire
from tokentrace.core.topic import partition_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


async def test_a_request_is_one_message_on_its_first_traces_partition(
    kafka_broker: KafkaCluster, store: RedisStore, topic: str
) -> None:
    rng = random.Random(3)
    requests = [make_spans(100, rng) for _ in range(12)]
    assert all(len({span.trace_id for span in spans}) > 20 for spans in requests)  # many traces in each
    for spans in requests:
        await store.ingest(spans)
    records = [record async for record in read_topic(kafka_broker.bootstrap, topic)]
    assert len(records) == len(requests)
    by_first = {spans[0].span_id: spans for spans in requests}
    for record in records:
        got = decode_wire(record.value or b"")
        sent = by_first[got[0].span_id]
        assert got == sent  # whole, in order
        assert record.partition == partition_for(sent[0].trace_id, [0, 1, 2, 3])
    assert len(Counter(record.partition for record in records)) > 1  # requests still spread over partitions


async def test_a_request_larger_than_a_message_is_cut_by_size(
    store: RedisStore, kafka_broker: KafkaCluster, topic: str
) -> None:
    spans = make_spans(store.max_batch_spans * 2 + 7, random.Random(4))
    await store.ingest(spans)
    records = [record async for record in read_topic(kafka_broker.bootstrap, topic)]
    assert [len(decode_wire(r.value or b"")) for r in records] == [store.max_batch_spans, store.max_batch_spans, 7]
    assert [s for r in records for s in decode_wire(r.value or b"")] == spans
    assert len({r.partition for r in records}) == 1
