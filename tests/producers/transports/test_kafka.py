"""KafkaTransport against the real broker from tests/infra (no mocks)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.codec import has_lz4, has_zstd
from aiokafka.structs import ConsumerRecord

from tests.infra.kafka import KafkaCluster
from tests.infra.procs import free_ports
from tokentrace.core.codec import decode_wire
from tokentrace.core.span import Span
from tokentrace.core.topic import partition_for
from tokentrace.producers.transports.base import Transport
from tokentrace.producers.transports.kafka import KafkaDeliveryError, KafkaTransport, best_compression

CODECS = ["gzip", *(["zstd"] if has_zstd() else []), *(["lz4"] if has_lz4() else [])]


def make_span(trace: str, seq: int, **attributes: str | int) -> Span:
    return Span(
        trace_id=trace,
        model="gpt-4o-mini",
        provider="openai",
        name="chat",
        prompt_tokens=100 + seq,
        comp_tokens=seq,
        started_at="2025-01-01T00:00:00Z",
        latency_ms=12.5,
        attributes={"seq": seq, **attributes},
    )


async def consume(
    bootstrap: str, topic: str, spans: int, wait_s: float = 30.0
) -> list[tuple[ConsumerRecord[bytes, bytes], list[Span]]]:
    """Read messages from the start until ``spans`` spans arrived, then a little longer for extras."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[ConsumerRecord[bytes, bytes], list[Span]]] = []
    try:
        deadline = time.monotonic() + wait_s
        count, extra_polls = 0, 2
        while time.monotonic() < deadline and (count < spans or extra_polls):
            if count >= spans:
                extra_polls -= 1
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    assert record.value is not None
                    decoded = decode_wire(record.value)
                    out.append((record, decoded))
                    count += len(decoded)
    finally:
        await consumer.stop()
    return out


def all_spans(records: list[tuple[ConsumerRecord[bytes, bytes], list[Span]]]) -> list[Span]:
    return [span for _, spans in records for span in spans]


# -- pure parts (no broker) ------------------------------------------------------------------------------


def test_compression_prefers_zstd_when_available() -> None:
    assert best_compression() == ("zstd" if has_zstd() else "gzip")


# -- against the broker ----------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.parametrize("codec", CODECS)
async def test_round_trip(kafka_broker: KafkaCluster, codec: str) -> None:
    topic = kafka_broker.create_topic("spans", partitions=3)
    sent = [make_span(f"trace-{i % 7}", i) for i in range(60)]
    with KafkaTransport(kafka_broker.bootstrap, topic=topic, compression=codec) as transport:
        assert isinstance(transport, Transport)
        transport.send(sent[:25])
        transport.send(sent[25:])
        transport.flush(30)
        stats = transport.stats()
    assert (stats.sent, stats.dropped, stats.queue_depth) == (60, 0, 0)
    records = await consume(kafka_broker.bootstrap, topic, 60)
    got = all_spans(records)
    assert sorted(got, key=lambda s: s.span_id) == sorted(sent, key=lambda s: s.span_id)
    assert len(records) < 60, "spans must be batched into few messages"
    for record, _ in records:  # a batch goes where Kafka's partitioner puts its key, its first trace id
        assert record.key is not None and record.key.decode() in {s.trace_id for s in sent}
        assert record.partition == partition_for(record.key.decode(), [0, 1, 2])


@pytest.mark.kafka
async def test_batches_spread_over_partitions_and_keep_send_order_within_each(kafka_broker: KafkaCluster) -> None:
    topic = kafka_broker.create_topic("order", partitions=4)
    transport = KafkaTransport(kafka_broker.bootstrap, topic=topic, linger_ms=1, max_batch_spans=7)
    for seq in range(15):
        for trace in range(12):
            transport.send([make_span(f"trace-{trace}", seq)])
    transport.close()
    assert transport.stats().sent == 180
    records = await consume(kafka_broker.bootstrap, topic, 180)
    order: dict[tuple[str, int], list[int]] = defaultdict(list)
    for record, spans in sorted(records, key=lambda r: (r[0].partition, r[0].offset)):
        assert record.key is not None and record.partition == partition_for(record.key.decode(), [0, 1, 2, 3])
        for span in spans:
            order[span.trace_id, record.partition].append(int(span.attributes["seq"]))
    assert sorted(seq for seqs in order.values() for seq in seqs) == sorted(list(range(15)) * 12)
    assert all(seqs == sorted(seqs) for seqs in order.values())  # in send order within a partition
    assert len({partition for _, partition in order}) > 1


@pytest.mark.kafka
async def test_flush_returns_once_the_broker_acked(kafka_broker: KafkaCluster) -> None:
    topic = kafka_broker.create_topic("flush")
    transport = KafkaTransport(kafka_broker.bootstrap, topic=topic, linger_ms=60_000)
    try:
        transport.send([make_span("t", i) for i in range(10)])
        await asyncio.sleep(0.3)
        assert transport.stats().sent == 0, "linger holds the batch until flush"
        began = time.monotonic()
        transport.flush(30)
        assert time.monotonic() - began < 10
        assert transport.stats().sent == 10
        assert len(all_spans(await consume(kafka_broker.bootstrap, topic, 10))) == 10
    finally:
        transport.close()


@pytest.mark.kafka
async def test_close_delivers_then_drops_later_sends(kafka_broker: KafkaCluster) -> None:
    topic = kafka_broker.create_topic("close")
    transport = KafkaTransport(kafka_broker.bootstrap, topic=topic, linger_ms=60_000)
    transport.send([make_span("t", i) for i in range(5)])
    transport.close()
    assert not transport._thread.is_alive()
    transport.send([make_span("t", 99)])
    transport.flush()
    transport.close()
    stats = transport.stats()
    assert (stats.sent, stats.dropped, stats.queue_depth) == (5, 1, 0)
    assert len(all_spans(await consume(kafka_broker.bootstrap, topic, 5))) == 5
    with pytest.raises(KafkaDeliveryError):
        await transport.send_async([make_span("t", 100)])


@pytest.mark.kafka
async def test_send_async_waits_for_the_ack(kafka_broker: KafkaCluster) -> None:
    topic = kafka_broker.create_topic("async", partitions=2)
    with KafkaTransport(kafka_broker.bootstrap, topic=topic, linger_ms=60_000) as transport:
        await transport.send_async([make_span(f"t{i}", i) for i in range(8)])
        assert transport.stats().sent == 8
    assert len(all_spans(await consume(kafka_broker.bootstrap, topic, 8))) == 8


@pytest.mark.kafka
async def test_a_span_too_large_is_rejected_and_the_rest_delivered(kafka_broker: KafkaCluster) -> None:
    topic = kafka_broker.create_topic("size")
    with KafkaTransport(kafka_broker.bootstrap, topic=topic, max_message_bytes=4000) as transport:
        transport.send([make_span("t", 1), make_span("t", 2, blob="z" * 8000), make_span("t", 3)])
        transport.flush(30)
        stats = transport.stats()
    assert (stats.sent, stats.rejected, stats.queue_depth) == (2, 1, 0)
    got = all_spans(await consume(kafka_broker.bootstrap, topic, 2))
    assert [s.attributes["seq"] for s in got] == [1, 3]


async def test_dead_bootstrap_never_blocks_or_raises() -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    transport = KafkaTransport(dead, delivery_timeout=1.0, max_queue_spans=50, close_timeout=2.0)
    began = time.monotonic()
    for i in range(80):
        transport.send([make_span("t", i)])
    assert time.monotonic() - began < 0.5, "send must not wait for the broker"
    assert transport.stats().dropped == 30, "spans beyond the queue bound are dropped at once"
    transport.flush()  # no timeout: returns because queued spans expire after delivery_timeout
    assert time.monotonic() - began < 8
    stats = transport.stats()
    assert (stats.sent, stats.dropped, stats.queue_depth) == (0, 80, 0)
    assert stats.failed_attempts > 0
    with pytest.raises(KafkaDeliveryError):
        await transport.send_async([make_span("t", 1)])
    began = time.monotonic()
    transport.close()
    assert time.monotonic() - began < 5
    assert transport.stats().dropped == 81


@pytest.mark.kafka
@pytest.mark.slow
async def test_no_span_lost_when_a_leader_is_killed(kafka_cluster: KafkaCluster) -> None:
    topic = kafka_cluster.create_topic("fault", partitions=2, config={"min.insync.replicas": "2"})
    sent = [make_span(f"trace-{i % 9}", i) for i in range(300)]
    with KafkaTransport(kafka_cluster.bootstrap, topic=topic, linger_ms=5, max_batch_spans=20) as transport:
        for i in range(0, 150, 10):
            transport.send(sent[i : i + 10])
        transport.flush(30)
        kafka_cluster.kill(kafka_cluster.partitions(topic)[0]["leader"])
        for i in range(150, 300, 10):
            transport.send(sent[i : i + 10])
            await asyncio.sleep(0.01)
        transport.flush(60)
        stats = transport.stats()
    assert (stats.sent, stats.dropped, stats.queue_depth) == (300, 0, 0)
    got = all_spans(await consume(kafka_cluster.bootstrap, topic, 300))
    assert sorted(s.span_id for s in got) == sorted(s.span_id for s in sent), "no loss, no duplicates"
