"""A worker of a new state schema keeps its table and view apart and rebuilds them from the span topic.

That is how an upgrade that changes the encoding of the aggregates stays exact: the new build never reads
the old build's changelog or Redis entries (it would misread them), starts with no state, seeks each
partition back to its first offset past the group's committed ones, and counts everything again; the
old build's API replicas keep reading the old view until they are replaced.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer
from tests.processors.harness import Workers, assert_view_is_recount, make_spans, produce, wait_counted
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.processors.state import table_name
from tokentrace.view.keys import Keys


def _whole_log(workers: Workers) -> str:
    return Path(workers.procs[-1].log_path).read_text()


def test_schema_1_keeps_the_names_deployments_have() -> None:
    assert table_name(1) == "buckets"
    keys = Keys("tt:", 1)
    assert (keys.entry("0:60000"), keys.seq, keys.changes, keys.epoch) == (
        "tt:e:0:60000",
        "tt:seq",
        "tt:changes",
        "tt:epoch",
    )


def test_another_schema_has_its_own_table_entries_and_feed_but_shares_the_trace_index() -> None:
    old, new = Keys("tt:", 1), Keys("tt:", 2)
    assert table_name(2) == "buckets-v2"
    assert new.entry("0:60000") == "tt:v2:e:0:60000"
    for name in ("seq", "changes", "epoch", "tombstones", "entry_prefix"):
        assert getattr(new, name).startswith("tt:v2:") and not getattr(old, name).startswith("tt:v2:")
    assert (new.traces, new.trace_prefix) == (old.traces, old.trace_prefix)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
async def test_a_new_schema_rebuilds_from_the_topic_and_leaves_the_old_view_alone(
    kafka_broker: KafkaCluster, redis_server: RedisServer, topic: str, workers: Workers, store: RedisStore
) -> None:
    rng = random.Random(31)
    before = make_spans(4_000, rng, spread_ms=10 * 60_000)
    await produce(kafka_broker.bootstrap, topic, before, batch=100)
    workers.start()
    await wait_counted(store, len(before), 60, workers)
    workers.stop_all()

    after = make_spans(2_000, rng, spread_ms=10 * 60_000)
    await produce(kafka_broker.bootstrap, topic, after, batch=100)
    workers.extra_args += ["--state-schema", "2"]  # the upgraded build: same deployment, same consumer group
    workers.start()
    upgraded = RedisStore(redis_server.url, kafka_broker.bootstrap, topic, state_schema=2)
    await upgraded.open()
    try:
        await wait_counted(upgraded, len(before) + len(after), 90, workers)
        await assert_view_is_recount(kafka_broker.bootstrap, topic, upgraded)
        await store.sync()
        assert (await store.health()).span_count == len(before)  # the old build's view: as it left it
        assert store.unreadable == upgraded.unreadable == 0
    finally:
        await upgraded.close()
    assert re.search(r"no state of schema 2 yet", _whole_log(workers)), workers.logs()
