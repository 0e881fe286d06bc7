"""MIST ingest (README, "Seed 001 (MIST) compatibility") in distributed mode: POST /mist on a ``tokentrace api`` replica goes through Kafka and the workers
like POST /spans, and GET /stats reads the same numbers from every replica."""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import pytest

from tests.processors.conftest import MakeAPI
from tests.processors.harness import Workers, wait_counted
from tokentrace.api.stores.redis_store import RedisStore

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def _message(i: int, start_ns: int) -> bytes:
    payload = {
        "trace_id": f"t{i}",
        "span_id": f"s{i}",
        "operation": ["infer", "embed"][i % 2],
        "start_ns": start_ns,
        "end_ns": start_ns + (i + 1) * 10_000_000,
        "status": "error" if i % 5 == 0 else "ok",
        "attrs": {"model": "gpt-4o", "provider": "openai", "tokens_in": i, "tokens_out": 1, "cost_usd": 0.001},
    }
    raw = json.dumps(payload).encode()
    head = json.dumps({"version": "1", "id": f"m{i}", "source": "infermux", "type": "trace.span"}).encode()
    return head[:-1] + b',"payload":' + raw + b',"checksum":%d}' % zlib.crc32(raw)


async def test_mist_through_kafka_and_stats_on_two_replicas(
    workers: Workers, store: RedisStore, make_api: MakeAPI
) -> None:
    workers.start()
    api, replica = await make_api(), await make_api()
    start_ns = time.time_ns() - 60_000_000_000
    for i in range(20):
        response = await api.post("/mist", data=_message(i, start_ns + i * 1_000_000))
        assert response.status == 202, await response.text()
    bad = await api.post("/mist", data=_message(0, start_ns).replace(b'"tokens_in": 0', b'"tokens_in": 9'))
    assert bad.status == 400 and "checksum" in (await bad.json())["error"]
    await wait_counted(store, 20, 90, workers)

    bodies: list[dict[str, Any]] = []
    for client in (api, replica):
        response = await client.get("/stats")
        assert response.status == 200
        bodies.append(await response.json())
    assert bodies[0] == bodies[1]
    stats = bodies[0]
    assert (stats["total_spans"], stats["error_count"], stats["error_rate"]) == (20, 4, 0.2)
    assert (stats["total_tokens_in"], stats["total_tokens_out"]) == (sum(range(20)), 20)
    assert stats["total_cost_usd"] == 0.02
    assert stats["latency_avg_ms"] == 105.0
    assert stats["by_operation"] == {"embed": {"count": 10, "errors": 2}, "infer": {"count": 10, "errors": 2}}
