"""The span topic on the broker: created on start (by the workers and the API replicas alike), with an error
that says what is wrong when Kafka is not there.

A broker started a moment ago (``python -m tokentrace.devcluster.kafka &`` just before the workers) is waited
for: the first connection is retried for ``connect_timeout_s`` (30 s) before the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

__all__ = ["KafkaUnreachable", "ensure_topic"]

log = logging.getLogger("tokentrace.topics")


class KafkaUnreachable(RuntimeError):
    """No broker answered at the configured bootstrap servers."""


async def ensure_topic(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    replication_factor: int,
    timeout_s: float = 15.0,
    connect_timeout_s: float = 30.0,
) -> int:
    """Create ``topic`` unless it exists; returns its partition count (the existing one if it existed)."""
    admin = await _connect(bootstrap_servers, timeout_s, connect_timeout_s)
    try:
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


async def _connect(bootstrap_servers: str, timeout_s: float, connect_timeout_s: float) -> AIOKafkaAdminClient:
    """A started admin client; retries while no broker answers, up to ``connect_timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_timeout_s
    waited = False
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(admin.start(), max(0.5, min(timeout_s, deadline - loop.time())))
            return admin
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await admin.close()
            if loop.time() >= deadline:
                raise KafkaUnreachable(
                    f"cannot reach Kafka at {bootstrap_servers} within {connect_timeout_s:g}s ({exc!r}); "
                    "check kafka.bootstrap_servers"
                ) from None
            if not waited:
                log.info("waiting up to %gs for Kafka at %s", connect_timeout_s, bootstrap_servers)
                waited = True
            await asyncio.sleep(1.0)


async def _partition_count(admin: AIOKafkaAdminClient, topic: str) -> int:
    described = await admin.describe_topics([topic])
    if not described or described[0].get("error_code", 0) != 0:
        return 0
    return len(described[0].get("partitions", []))
