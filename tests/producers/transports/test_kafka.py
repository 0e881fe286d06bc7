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
from tokentrace.producers.transports.base import Transport
from tokentrace.producers.transports.kafka import (
    KafkaDeliveryError,
    KafkaTransport,
    best_compression,
    partition_for,
    split_messages,
)

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


def test_messages_group_traces_by_partition_in_send_order() -> None:
    spans = [make_span(f"trace-{t}", s) for s in range(5) for t in range(20)]
    messages, too_large = split_messages(spans, [0, 1, 2, 3], max_spans=7, max_bytes=1 << 20)
    assert not too_large
    assert sum(m.count for m in messages) == len(spans)
    seen: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        decoded = decode_wire(message.value)
        assert len(decoded) == message.count <= 7
        assert message.key == decoded[0].trace_id.encode()
        for span in decoded:
            assert partition_for(span.trace_id, [0, 1, 2, 3]) == message.partition
            seen[span.trace_id].append(int(span.attributes["seq"]))
    assert all(seqs == [0, 1, 2, 3, 4] for seqs in seen.values())
    assert len({m.partition for m in messages}) > 1


def test_partition_matches_kafkas_keyed_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for trace in ("a", "trace-1", "0b2f5c3e-8f4e-4b8e-9a4f-1c2d3e4f5a6b"):
        assert partition_for(trace, list(range(6))) == DefaultPartitioner()(
            trace.encode(), list(range(6)), list(range(6))
        )


def test_messages_split_by_size_and_reject_a_span_too_large_alone() -> None:
    spans = [make_span("t", i, blob="x" * 300) for i in range(10)]
    huge = make_span("t", 99, blob="y" * 5000)
    messages, too_large = split_messages([*spans, huge], [0], max_spans=100, max_bytes=2000)
    assert too_large == [huge]
    assert all(len(m.value) <= 2000 for m in messages)
    assert [s.attributes["seq"] for m in messages for s in decode_wire(m.value)] == list(range(10))


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
    for record, spans in records:
        assert record.key == spans[0].trace_id.encode()
        assert {partition_for(s.trace_id, [0, 1, 2]) for s in spans} == {record.partition}


@pytest.mark.kafka
async def test_spans_of_a_trace_stay_in_one_partition_in_order(kafka_broker: KafkaCluster) -> None:
    topic = kafka_broker.create_topic("order", partitions=4)
    transport = KafkaTransport(kafka_broker.bootstrap, topic=topic, linger_ms=1, max_batch_spans=7)
    for seq in range(15):
        for trace in range(12):
            transport.send([make_span(f"trace-{trace}", seq)])
    transport.close()
    assert transport.stats().sent == 180
    records = await consume(kafka_broker.bootstrap, topic, 180)
    placed: dict[str, set[int]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    for record, spans in sorted(records, key=lambda r: (r[0].partition, r[0].offset)):
        for span in spans:
            placed[span.trace_id].add(record.partition)
            order[span.trace_id].append(int(span.attributes["seq"]))
    assert len(order) == 12
    assert all(len(parts) == 1 for parts in placed.values())
    assert all(seqs == list(range(15)) for seqs in order.values())
    assert len({p for parts in placed.values() for p in parts}) > 1


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
