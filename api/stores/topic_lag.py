"""How far the Redis view is behind the span topic: messages per partition not yet counted in it.

The topic's end offsets come from Kafka (a group-less consumer that only asks for offsets); what the view
has counted comes from each partition's meta entry (the offset of the last message the workers counted and
materialized). Their difference is the backlog an operator watches: `/health`'s ``queue_depth`` and the
``tokentrace_view_lag_messages`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["EndOffsets", "lag_by_partition"]


def lag_by_partition(ends: Mapping[int, int], counted_through: Mapping[int, int]) -> dict[int, int]:
    """Messages not yet counted per partition: ``ends`` are the next offsets to be written, ``counted_through``
    the offset of the last message counted (absent: none yet). Never negative (the ends may be older)."""
    return {p: max(0, end - counted_through.get(p, -1) - 1) for p, end in sorted(ends.items())}


class EndOffsets:
    """Reads the span topic's end offsets (Kafka ``ListOffsets``); every step bounded by ``timeout_s``.

    A consumer that failed to start or to answer is dropped (a new one connects next time), and closing
    never waits longer than ``timeout_s``: a replica's shutdown must not hang on an unreachable broker.
    """

    def __init__(self, bootstrap_servers: str, topic: str, timeout_s: float = 5.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self, partitions: list[int]) -> dict[int, int]:
        consumer = self._consumer
        if consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                request_timeout_ms=int(self.timeout_s * 1000),
            )
            try:
                await asyncio.wait_for(consumer.start(), self.timeout_s)
            except BaseException:
                await self._stop(consumer)
                raise
            self._consumer = consumer
        tps = [TopicPartition(self.topic, p) for p in partitions]
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(tps), self.timeout_s)
        except BaseException:
            self._consumer = None
            await self._stop(consumer)
            raise
        return {tp.partition: offset for tp, offset in ends.items()}

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await self._stop(consumer)

    async def _stop(self, consumer: AIOKafkaConsumer) -> None:
        # aiokafka 0.14 may raise CancelledError stopping a consumer without a group; never wait long.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(consumer.stop(), self.timeout_s)
