"""Tests 3, 5 and 6: kill -9 of workers, a flushed or restarted Redis, poison messages — totals stay exact.

Every total is compared with a brute-force recount of the source topic itself, so "exact" means: every
span on the topic counted once, none twice.
"""

from __future__ import annotations

import asyncio
import random
import time

import msgspec
import pytest

from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer
from tests.processors.harness import (
    Oracle,
    Workers,
    aggregate_totals,
    make_spans,
    produce,
    produce_raw,
    recount_topic,
    wait_counted,
    wait_view_total,
)
from tokentrace.api.stores.redis_store import POISON_COUNTER, RedisStore
from tokentrace.core.codec import encode_wire
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import HOUR_MS, total
from tokentrace.view.keys import trace_spans

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


async def _assert_exact(kafka: KafkaCluster, topic: str, store: RedisStore, expected_poison: int = 0) -> None:
    spans, poison = await recount_topic(kafka.bootstrap, topic)
    assert poison == expected_poison
    oracle = Oracle(spans)
    now = now_ms()
    view = await wait_view_total(store, now - 2 * HOUR_MS, now + HOUR_MS, len(spans))
    assert aggregate_totals(view) == oracle.totals()
    assert aggregate_totals(total(await store.lifetime(None))) == oracle.totals()
    expected = {m: len(s) for m, s in oracle.by("model").items()}
    deadline = time.monotonic() + 20  # the view converges, as for the totals (once, under load, it lagged them)
    while True:
        by_model = await store.query(now - 2 * HOUR_MS, now + HOUR_MS, "model", {})
        if {m: a.count for m, a in by_model.items()} == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    assert {m: a.count for m, a in by_model.items()} == expected
    assert store.counters[POISON_COUNTER] == {(): float(expected_poison)}


@pytest.mark.slow
async def test_kill_9_workers_while_streaming_loses_and_doubles_nothing(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, store: RedisStore
) -> None:
    spans = make_spans(200_000, random.Random(3), spread_ms=10 * 60_000)
    workers.start()
    workers.start()
    producing = asyncio.create_task(produce(kafka_broker.bootstrap, topic, spans, batch=100, rate=5000))
    rng = random.Random(4)
    kills = 0
    await asyncio.sleep(4)
    while not producing.done():
        victim = rng.choice(workers.alive())
        victim.kill()  # SIGKILL: no flush, no commit, no goodbye to the group
        kills += 1
        workers.start()
        await asyncio.wait([producing], timeout=5)
    await producing
    assert kills >= 4
    await wait_counted(store, len(spans), 150, workers)
    await _assert_exact(kafka_broker, topic, store)


async def test_redis_flushed_or_restarted_is_rebuilt_exactly(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, redis_server: RedisServer, store: RedisStore
) -> None:
    rng = random.Random(5)
    workers.start()
    await produce(kafka_broker.bootstrap, topic, make_spans(10_000, rng))
    await wait_counted(store, 10_000, 60, workers)

    with redis_server.client() as client:
        epoch = client.get(store.keys.epoch)
        assert epoch is not None  # set before the view's first entry
        client.flushall()
        # The reader saw the flush (the epoch gone) instead of keeping its whole old view; a worker's tick may
        # have re-written part of it already.
        assert total(await store.lifetime(None)).count < 10_000
        for _ in range(300):  # a worker notices within its housekeeping tick (1 s), and re-materializes
            if client.get(store.keys.epoch) not in (None, epoch):
                break
            await asyncio.sleep(0.1)
        assert client.get(store.keys.epoch) not in (None, epoch)
    await wait_counted(store, 10_000, 30, workers)
    await _assert_exact(kafka_broker, topic, store)

    redis_server.kill()  # no persistence: it comes back empty
    during = make_spans(5_000, rng)
    await produce(kafka_broker.bootstrap, topic, during)  # while Redis is down
    await asyncio.sleep(1)
    redis_server.restart()
    await wait_counted(store, 15_000, 60, workers)
    await _assert_exact(kafka_broker, topic, store)
    # Trace writes retried until Redis was back (holding back their events' acks): every span sent meanwhile
    # reaches /traces. The view may count them first: re-materializing after the restart writes the worker's
    # whole state, including events whose trace writes are still waiting out their backoff.
    wanted = {(span.trace_id, span.span_id) for span in during}
    indexed: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 30
    with redis_server.client() as client:
        while not wanted <= indexed and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            indexed = {
                (trace.decode(), span.span_id)
                for trace in client.zrange(store.keys.traces, 0, -1)
                for span in trace_spans(client.get(store.keys.trace(trace.decode())))
            }
    assert wanted <= indexed, f"{len(wanted - indexed)} of {len(wanted)} spans not indexed" + workers.logs()


async def test_poison_messages_are_counted_and_never_stop_a_partition(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, store: RedisStore
) -> None:
    rng = random.Random(6)
    dead_letters = kafka_broker.create_topic("dead-letters", partitions=4)
    workers.extra_args = ["--dead-letter-topic", dead_letters]
    workers.start()
    spans = make_spans(4_000, rng)
    poison = [
        b"\x00\x01 not msgpack",
        msgspec.msgpack.encode({"v": 2, "spans": []}),  # a wire version this build does not know
        msgspec.msgpack.encode({"v": 1, "spans": [{"model": "gpt-4o"}]}),  # no token counts
        msgspec.msgpack.encode({"v": 1, "spans": "nope"}),
        b"",
    ]
    values: list[tuple[int, bytes]] = []
    for i in range(0, len(spans), 200):
        partition = (i // 200) % 4
        values.append((partition, encode_wire(spans[i : i + 200])))
        values.append((partition, poison[(i // 200) % len(poison)]))
    began = time.monotonic()
    await produce_raw(kafka_broker.bootstrap, topic, values)
    await wait_counted(store, len(spans), 60, workers)
    assert time.monotonic() - began < 60
    await _assert_exact(kafka_broker, topic, store, expected_poison=len(values) // 2)
    # Each poison message was copied to the dead-letter topic (no crash here, so exactly once).
    copied, copied_poison = await recount_topic(kafka_broker.bootstrap, dead_letters)
    assert (copied, copied_poison) == ([], len(values) // 2)
