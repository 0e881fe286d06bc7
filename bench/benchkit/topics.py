"""Span topics on a ``tokentrace.devcluster`` broker: create one, fill it as producers do, read it back.

``create_topic`` makes a uniquely named topic with the product's own ``ensure_topic`` (what workers and API
replicas call on start) and waits until every partition has a leader; ``produce`` publishes spans in
wire messages split and keyed by ``tokentrace.core.topic`` (every producer's rule: a batch goes to its
first trace's partition), acks=all; ``read_topic`` yields every record up to each log's end when called.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tokentrace.core.span import Span
from tokentrace.core.topic import split_messages
from tokentrace.devcluster.kafka import KafkaCluster, admin_call
from tokentrace.kafka_topics import ensure_topic

__all__ = ["create_topic", "produce", "read_topic"]

#: Largest wire message ``produce`` makes (bytes), under the broker's default 1 MiB limit.
MAX_MESSAGE_BYTES = 900_000


async def create_topic(kafka: KafkaCluster, prefix: str, partitions: int = 4, timeout_s: float = 30.0) -> str:
    """A new topic named ``<prefix>-<random>`` with ``partitions`` partitions, replicated to every node (up to
    3); returns its name once each partition has a leader."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    await ensure_topic(kafka.bootstrap, name, partitions, min(3, kafka.size))
    deadline = time.monotonic() + timeout_s
    while True:
        topics = await admin_call(kafka.bootstrap, "describe_topics", [name])
        found = topics[0]["partitions"] if topics and topics[0]["error_code"] == 0 else []
        if len(found) == partitions and all(p["leader"] >= 0 for p in found):
            return name
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name}: not every partition has a leader after {timeout_s:g} s: {found}")
        await asyncio.sleep(0.2)


async def produce(bootstrap: str, topic: str, spans: Sequence[Span], batch: int = 100) -> None:
    """Publish ``spans`` as ``batch``-span batches, each split into messages and keyed as every producer does
    (``core.topic.split_messages``), with acks=all and idempotence; returns when the broker acked them all."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, request_timeout_ms=10_000
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        for i in range(0, len(spans), batch * 10):
            chunk = list(spans[i : i + batch * 10])
            messages = [
                message
                for j in range(0, len(chunk), batch)
                for message in split_messages(chunk[j : j + batch], partitions, batch, MAX_MESSAGE_BYTES)[0]
            ]
            sent = [await producer.send(topic, m.value, key=m.key, partition=m.partition) for m in messages]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, partitions: int = 4) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of the topic's partitions, from each log's start to its end as it was when called."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        remaining = {tp for tp in parts if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    yield record
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        with contextlib.suppress(asyncio.CancelledError):  # aiokafka 0.14 without a group id
            await consumer.stop()
