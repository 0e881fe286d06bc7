"""A hole in a partition's offsets is sought back over, never counted past; retention is the one exception.

The group's committed offsets are set ahead of the (empty) state before a worker starts, which is what
Faust resumes from after a recovery: the worker must see the hole, seek back and count every message.
When the log no longer has the missing messages (deleted by retention), it must go on from the log start
and say which offsets it could not count.
"""

from __future__ import annotations

import contextlib
import random
import re
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from tests.infra.kafka import KafkaCluster
from tests.processors.harness import (
    Workers,
    assert_view_is_recount,
    make_spans,
    produce,
    recount_topic,
    wait_counted,
)
from tokentrace.api.stores.redis_store import RedisStore

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


async def _commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for the worker's consumer group, as if an earlier worker had got that far."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in offsets])
        await consumer.commit({TopicPartition(topic, p): offset for p, offset in offsets.items()})
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


def _partitions(lines: list[str]) -> set[int]:
    """The partition each log line names first."""
    return {int(found.group(1)) for line in lines if (found := re.search(r"partition (\d+)", line))}


def _log_lines(workers: Workers, pattern: str) -> list[str]:
    return [
        line for p in workers.procs for line in Path(p.log_path).read_text().splitlines() if re.search(pattern, line)
    ]


async def test_committed_offsets_past_the_state_are_sought_back_and_everything_counts(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, store: RedisStore
) -> None:
    spans = make_spans(6_000, random.Random(21), spread_ms=10 * 60_000)
    await produce(kafka_broker.bootstrap, topic, spans, batch=100)  # ~15 messages a partition
    await _commit(kafka_broker.bootstrap, workers.app_id, topic, {0: 7, 2: 3})
    workers.start()
    await wait_counted(store, len(spans), 60, workers)
    await assert_view_is_recount(kafka_broker.bootstrap, topic, store)
    # Each partition committed past its state is brought back to the state's offset: by the hole check when a
    # message past it arrives, or by the stall watchdog when none arrives (Faust may drop the first fetch; the
    # watchdog then seeks to 0 first). The hole check fires for those partitions only.
    holes = _partitions(_log_lines(workers, r"seeking back"))
    stalls = _partitions(_log_lines(workers, r"resuming it and seeking to 0\b"))
    seeks = "\n".join(_log_lines(workers, r"seeking|stalled|no state"))
    assert holes <= {0, 2} and {0, 2} <= holes | stalls, seeks


async def test_messages_deleted_by_retention_are_skipped_with_an_error_the_rest_counts(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, store: RedisStore
) -> None:
    spans = make_spans(6_000, random.Random(22), spread_ms=10 * 60_000)
    await produce(kafka_broker.bootstrap, topic, spans, batch=100)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 1): RecordsToDelete(before_offset=4)})
    finally:
        await admin.close()
    await _commit(kafka_broker.bootstrap, workers.app_id, topic, {1: 9})
    remaining, _ = await recount_topic(kafka_broker.bootstrap, topic)  # reads from each log's start
    assert 0 < len(spans) - len(remaining) < len(spans) // 4
    workers.start()
    await wait_counted(store, len(remaining), 60, workers)
    await assert_view_is_recount(kafka_broker.bootstrap, topic, store)
    errors = _log_lines(workers, r"offsets 0\.\.3 were deleted")
    assert len(errors) == 1 and "partition 1" in errors[0], errors
