"""Creating the span topic on start, with an error that says what is wrong when Kafka is not there."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

__all__ = ["KafkaUnreachable", "ensure_topic"]


class KafkaUnreachable(RuntimeError):
    """No broker answered at the configured bootstrap servers."""


async def ensure_topic(
    bootstrap_servers: str, topic: str, partitions: int, replication_factor: int, timeout_s: float = 15.0
) -> int:
    """Create ``topic`` unless it exists; returns its partition count (the existing one if it existed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    try:
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise KafkaUnreachable(
                f"cannot reach Kafka at {bootstrap_servers} ({exc!r}); check kafka.bootstrap_servers"
            ) from None
        existing = await _partition_count(admin, topic)
        if existing:
            return existing
        response = await admin.create_topics([NewTopic(topic, partitions, replication_factor)])
        for _, code, *rest in response.topic_errors:
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (another process won the race)
                raise RuntimeError(f"creating topic {topic} failed: error {code} {rest}")
        for _ in range(int(timeout_s * 10)):
            count = await _partition_count(admin, topic)
            if count:
                return count
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} was created but does not show up in the metadata")
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _partition_count(admin: AIOKafkaAdminClient, topic: str) -> int:
    described = await admin.describe_topics([topic])
    if not described or described[0].get("error_code", 0) != 0:
        return 0
    return len(described[0].get("partitions", []))
