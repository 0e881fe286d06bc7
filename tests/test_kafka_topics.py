"""ensure_topic: waits for a broker that is still starting, then fails with a clear error when none answers."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.infra.kafka import KafkaCluster
from tests.infra.procs import free_ports
from tokentrace.kafka_topics import KafkaUnreachable, ensure_topic


async def test_no_broker_is_a_clear_error_after_the_connect_timeout() -> None:
    (port,) = free_ports(1)
    began = time.monotonic()
    with pytest.raises(KafkaUnreachable, match=rf"cannot reach Kafka at 127\.0\.0\.1:{port} within 2s"):
        await ensure_topic(f"127.0.0.1:{port}", "spans", 1, 1, timeout_s=2.0, connect_timeout_s=2.0)
    assert 2.0 <= time.monotonic() - began < 10.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.mark.kafka
async def test_a_broker_that_starts_late_is_waited_for(kafka_broker: KafkaCluster) -> None:
    """The bootstrap address only starts to listen 3 s in (a proxy to the real broker, like a JVM starting)."""
    (port,) = free_ports(1)
    target_port = kafka_broker.nodes[0].port

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

    async def listen_late() -> asyncio.Server:
        await asyncio.sleep(3.0)
        return await asyncio.start_server(relay, "127.0.0.1", port)

    topic = f"late-{uuid.uuid4().hex[:8]}"
    began = time.monotonic()
    late = asyncio.create_task(listen_late())
    try:
        count = await ensure_topic(f"127.0.0.1:{port}", topic, 3, 1, connect_timeout_s=30.0)
    finally:
        (await late).close()
    assert count == 3
    assert time.monotonic() - began >= 3.0
    assert [p["partition"] for p in kafka_broker.partitions(topic)] == [0, 1, 2]
