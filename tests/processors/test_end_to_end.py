"""Test 1 and 7: spans through the SDK's KafkaTransport and through POST /spans of ``tokentrace api``, read
back through the HTTP API of two replicas, against a brute-force recount."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from tests.infra.kafka import KafkaCluster
from tests.processors.conftest import MakeAPI
from tests.processors.harness import Oracle, Workers, make_spans, wait_counted
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.aggregate import NANO
from tokentrace.core.codec import encode_json
from tokentrace.core.span import Span
from tokentrace.producers.transports.kafka import KafkaTransport

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def _close(api: float | None, exact: float, rel: float = 0.01) -> bool:
    return api is not None and abs(api - exact) <= rel * abs(exact) + 0.01


async def _json(client: Any, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_end_to_end_matches_a_recount_and_replicas_agree(
    kafka_broker: KafkaCluster, topic: str, workers: Workers, store: RedisStore, make_api: MakeAPI
) -> None:
    rng = random.Random(1)
    via_sdk = make_spans(3000, rng)
    via_http = make_spans(2000, rng)
    workers.start()
    api, replica = await make_api(), await make_api()

    transport = KafkaTransport(kafka_broker.bootstrap, topic=topic, linger_ms=5)
    try:
        transport.send(via_sdk)
        transport.flush(30)
        assert transport.stats().sent == len(via_sdk)
    finally:
        transport.close()
    for i in range(0, len(via_http), 500):
        body = encode_json([msgspec.structs.asdict(s) for s in via_http[i : i + 500]])
        response = await api.post("/spans", data=body, headers={"Content-Type": "application/json"})
        assert response.status == 202, await response.text()
        assert await response.json() == {"accepted": 500}

    oracle = Oracle()
    oracle.add(via_sdk + via_http)
    await wait_counted(store, 5000, 90, workers)
    exact = oracle.totals()

    # GET /metrics: sums and counts exact, quantiles within the sketch's 1 %.
    body = await _json(api, "/metrics?window=1h")
    assert body["span_count"] == exact["count"]
    assert round(body["cost"]["total_usd"] * NANO) == exact["cost_nanos"]
    assert body["tokens"] == {
        "prompt_total": exact["prompt_tokens"],
        "completion_total": exact["comp_tokens"],
        "total": exact["total_tokens"],
    }
    assert body["errors"]["count"] == exact["errors"]
    assert body["errors"]["timeout_count"] == exact["timeouts"]
    assert body["quality"]["scored_span_count"] == exact["score_count"]
    for q in (0.5, 0.95, 0.99):
        assert _close(body["latency"][f"p{round(q * 100)}_ms"], oracle.quantile(q)), q
    by_model = oracle.by("model")
    assert body["cost"]["by_model"] == {
        m: round(sum(int((s.cost_usd or 0) * NANO + 0.5) for s in spans) / NANO, 9) for m, spans in by_model.items()
    }

    # GET /metrics/{name}?groupby=... for a built-in dimension and for an attribute.
    latency = await _json(api, "/metrics/latency?window=1h&groupby=model")
    assert set(latency["by_model"]) == set(by_model)
    for model, spans in by_model.items():
        assert latency["by_model"][model]["span_count"] == len(spans)
        assert _close(latency["by_model"][model]["p95_ms"], oracle.quantile(0.95, spans))
    tokens = await _json(api, "/metrics/tokens?window=1h&groupby=workflow")
    for workflow, spans in oracle.by("workflow").items():
        assert tokens["by_workflow"][workflow]["total"] == sum(int(s.total_tokens or 0) for s in spans)

    # /traces: listing, filters and one trace.
    traces = oracle.traces()
    listing = await _json(api, "/traces?limit=5")
    assert listing["total"] == len(traces)
    assert [t["started_at"] for t in listing["traces"]] == sorted(
        (t["started_at"] for t in listing["traces"]), reverse=True
    )
    errors = {s.trace_id for s in oracle.spans if s.status == "error" and s.model == "gpt-4o"}
    filtered = await _json(api, "/traces?model=gpt-4o&status=error&limit=200")
    assert filtered["total"] == len(errors)
    trace_id, span_count = traces.most_common(1)[0]
    one = await _json(api, f"/traces/{trace_id}")
    assert one["span_count"] == span_count == len(one["spans"])
    assert {s["span_id"] for s in one["spans"]} == {s.span_id for s in oracle.spans if s.trace_id == trace_id}
    assert (await api.get("/traces/not-a-trace")).status == 404

    # /metrics/prometheus: lifetime counters equal the recount; no poison.
    text = await (await api.get("/metrics/prometheus")).text()
    samples = _prometheus(text)
    assert sum(v for k, v in samples.items() if k.startswith("tokentrace_spans_total")) == exact["count"]
    assert samples["tokentrace_poison_messages_total"] == 0
    prompt = sum(v for k, v in samples.items() if k.startswith("tokentrace_tokens_total") and 'type="prompt"' in k)
    assert prompt == exact["prompt_tokens"]

    # Test 7: a second replica answers byte for byte alike.
    for path in (
        "/metrics?window=1h",
        "/metrics?window=30d&groupby=caller",
        "/metrics/cost?window=6h&groupby=provider",
        "/metrics/latency_p95?window=1h",
        "/traces?limit=20",
        f"/traces/{trace_id}",
        "/metrics/prometheus",
    ):
        first = await (await api.get(path)).read()
        second = await (await replica.get(path)).read()
        assert first == second, path
    health = await _json(replica, "/health")
    assert health["span_count"] == exact["count"] and health["transport"] == "kafka"


def _prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_span_json_round_trip() -> None:
    """The POST body the test builds is what the API decodes (guards the helper itself)."""
    span = make_spans(1, random.Random(2))[0]
    assert msgspec.json.decode(encode_json([msgspec.structs.asdict(span)]), type=list[Span])[0] == span
