"""POST /v1/traces on a ``tokentrace api`` replica: through Kafka and a worker like POST /spans, read alike on
every replica (the shared ``accept_spans`` tail is what makes the endpoint work in both modes)."""

from __future__ import annotations

import gzip
import time
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.api.test_contract_otlp import TRACE, cost_oracle, skipped_counter
from tests.core.test_otlp import GENAI, export_request, otlp_span
from tests.processors.conftest import MakeAPI, config, make_api, store, topic, workers  # noqa: F401 (fixtures)
from tests.processors.harness import Workers, wait_counted
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.otlp import CACHE_READ_NAMES

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


async def test_otlp_through_kafka_read_alike_on_two_replicas(
    workers: Workers,  # noqa: F811
    store: RedisStore,  # noqa: F811
    make_api: MakeAPI,  # noqa: F811
) -> None:
    workers.start()
    api, replica = await make_api(), await make_api()
    start_ns = time.time_ns() - 60_000_000_000
    attrs = GENAI | {CACHE_READ_NAMES[0]: 600, "gen_ai.evaluation.score.value": 0.5}
    spans = [
        otlp_span(attrs, trace_id=bytes.fromhex(TRACE), span_id=i.to_bytes(8, "big"), start_ns=start_ns + i * 1000)
        for i in range(1, 11)
    ]
    spans.append(otlp_span({"http.route": "/chat"}, trace_id=bytes.fromhex(TRACE), span_id=b"\x63" * 8))
    response = await api.post(
        "/v1/traces",
        data=gzip.compress(export_request(*spans).SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert response.status == 200, await response.read()
    assert ExportTraceServiceResponse.FromString(await response.read()).partial_success.rejected_spans == 1
    await wait_counted(store, 10, 90, workers)

    bodies: list[dict[str, Any]] = []
    for client in (api, replica):
        metrics = await client.get("/metrics", params={"window": "1h"})
        assert metrics.status == 200
        bodies.append(await metrics.json())
    assert bodies[0] == bodies[1]
    body = bodies[0]
    assert body["span_count"] == 10
    assert body["tokens"] == {"prompt_total": 10_000, "completion_total": 2_000, "total": 12_000}
    assert body["cost"]["total_usd"] == pytest.approx(10 * cost_oracle("gpt-4o", "openai", 1000, 200, 600), abs=1e-9)
    assert body["quality"]["score_avg"] == 0.5
    trace = await (await replica.get(f"/traces/{TRACE}")).json()
    assert sorted(s["span_id"] for s in trace["spans"]) == [i.to_bytes(8, "big").hex() for i in range(1, 11)]
    assert (await skipped_counter(api))["no_model"] == 1
