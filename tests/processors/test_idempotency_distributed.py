"""Idempotency keys in the distributed mode: a retried batch counts once, whichever ``tokentrace api`` replica
took each attempt, also after a worker was killed with ``kill -9`` (the ids are restored from the changelog)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from tests.api.lossy_proxy import LossyProxy
from tests.processors.conftest import MakeAPI
from tests.processors.harness import Oracle, Workers, aggregate_totals, make_spans
from tokentrace.api.stores.redis_store import RETRIED_COUNTER, RedisStore
from tokentrace.core.span import Span
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import HOUR_MS, total
from tokentrace.producers import HTTPTransport

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

_encode = msgspec.json.Encoder()


async def _post(client: Any, spans: Sequence[Span], key: str) -> None:
    body = _encode.encode([msgspec.structs.asdict(s) for s in spans])
    response = await client.post(
        "/spans", data=body, headers={"Content-Type": "application/json", "Idempotency-Key": key}
    )
    assert response.status == 202, await response.text()
    assert await response.json() == {"accepted": len(spans)}


async def _settled(store: RedisStore, workers: Workers, retried: int, within_s: float = 90) -> int:
    """Wait until the workers processed every message on the topic and skipped ``retried`` as retries; the
    view's span count then."""
    deadline = time.monotonic() + within_s
    while True:
        lag = await store.refresh_lag()
        seen = store.counters.get(RETRIED_COUNTER, {}).get((), 0.0)
        if lag and not any(lag.values()) and seen >= retried:
            break
        assert time.monotonic() < deadline, f"lag {lag}, {seen} retries seen{workers.logs()}"
        await asyncio.sleep(0.25)
    assert store.counters[RETRIED_COUNTER] == {(): float(retried)}
    return (await store.health()).span_count


async def _assert_view(store: RedisStore, spans: list[Span]) -> None:
    now = now_ms()
    view = total(await store.query(now - 2 * HOUR_MS, now + HOUR_MS, None, {}))
    assert aggregate_totals(view) == Oracle(spans).totals()


async def _phase_one(store: RedisStore, workers: Workers, make_api: MakeAPI) -> tuple[Any, Any, list[Span]]:
    """Retries through two replicas: each batch counted once. Returns the replicas and the spans counted."""
    rng = random.Random(27)
    big = make_spans(700, rng, spread_ms=10 * 60_000)  # two Kafka messages: the API cuts at 500 spans
    small = make_spans(40, rng, spread_ms=10 * 60_000)
    api, replica = await make_api(), await make_api()
    await _post(api, big, "batch-big")
    await _post(replica, big, "batch-big")  # its 202 was lost: retried through another replica
    await _post(replica, small, "batch-small")
    await _post(api, small, "batch-small")
    await _post(api, small, "batch-small-again")  # the same spans under a new key: a new batch, counted
    assert await _settled(store, workers, retried=3) == 700 + 40 + 40
    await _assert_view(store, big + small + small)
    responses = [await c.get("/metrics?window=1h") for c in (api, replica)]
    assert [(await r.json())["span_count"] for r in responses] == [780, 780]
    return api, replica, big + small


async def test_a_retried_batch_counts_once_across_replicas(
    workers: Workers, store: RedisStore, make_api: MakeAPI
) -> None:
    workers.start()
    await _phase_one(store, workers, make_api)


async def test_ids_survive_a_rebalance_and_a_worker_kill_9(
    workers: Workers, store: RedisStore, make_api: MakeAPI
) -> None:
    first = workers.start()
    api, replica, spans = await _phase_one(store, workers, make_api)
    big, small = spans[:700], spans[700:]
    # A second worker joins (the partitions it takes are restored from the changelog), then the first is killed
    # with SIGKILL (the second restores the rest): every id below is known only through the changelog.
    workers.start()
    await asyncio.sleep(workers.session_timeout + 2)
    first.kill()
    fresh = make_spans(30, random.Random(28), spread_ms=10 * 60_000)
    await _post(replica, big, "batch-big")
    await _post(api, small, "batch-small")
    await _post(api, fresh, "batch-fresh")
    assert await _settled(store, workers, retried=6, within_s=120) == 700 + 40 + 40 + 30
    await _assert_view(store, big + small + small + fresh)


async def test_sdk_retries_after_a_lost_202_count_every_span_once(
    workers: Workers, store: RedisStore, make_api: MakeAPI
) -> None:
    """A proxy in front of a replica replaces every third 202 by a 502: ``HTTPTransport`` retries batches that
    are in Kafka already, under the same key; each is skipped by the worker once."""
    workers.start()
    api = await make_api()
    proxy = LossyProxy(str(api.make_url("")).rstrip("/")).start()
    sent = make_spans(600, random.Random(31), spread_ms=10 * 60_000)
    transport = HTTPTransport(proxy.url, batch_size=20, flush_interval=0.01, max_queue=len(sent), backoff=0.01)
    try:
        transport.send(sent)
        await asyncio.to_thread(transport.flush, 60)  # the replica answers on this loop meanwhile
        assert transport.stats().sent == len(sent)
        assert proxy.lost >= 10
        # Every lost answer made one more message of the same batch (the same id), which the worker skipped.
        assert await _settled(store, workers, retried=proxy.lost) == len(sent)
        await _assert_view(store, sent)
    finally:
        transport.close()
        proxy.stop()
