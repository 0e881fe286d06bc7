"""POST /spans: the statuses, bodies and error messages of api/openapi.yaml."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient
from tokentrace.core.timefmt import format_ms, now_ms

SPAN = {
    "name": "summarize-document",
    "model": "gpt-4o",
    "provider": "openai",
    "prompt_tokens": 512,
    "comp_tokens": 128,
    "total_tokens": 640,
    "cost_usd": 0.00448,
    "latency_ms": 1240,
    "status": "ok",
    "caller": "summarizer-service",
    "attributes": {"eval.score": 0.87, "workflow": "document-summary"},
}


async def post(client: TestClient[Any, Any], body: Any, **kwargs: Any) -> tuple[int, Any]:
    response = await client.post("/spans", json=body, **kwargs)
    return response.status, await response.json()


async def test_array_of_spans_is_accepted(client: TestClient[Any, Any]) -> None:
    assert await post(client, [SPAN, SPAN]) == (202, {"accepted": 2})


async def test_single_object_is_accepted(client: TestClient[Any, Any]) -> None:
    assert await post(client, SPAN) == (202, {"accepted": 1})


async def test_missing_model_names_the_span_index(client: TestClient[Any, Any]) -> None:
    bad = {k: v for k, v in SPAN.items() if k != "model"}
    status, body = await post(client, [SPAN, SPAN, bad])
    assert status == 400
    assert "model" in body["error"] and "$[2]" in body["error"]


async def test_no_token_count_is_rejected(client: TestClient[Any, Any]) -> None:
    bad = {"model": "gpt-4o", "latency_ms": 10}
    status, body = await post(client, [bad])
    assert status == 400
    assert "token count" in body["error"] and "$[0]" in body["error"]


async def test_wrong_types_and_negative_values_are_rejected(client: TestClient[Any, Any]) -> None:
    for field, value in (("prompt_tokens", -1), ("prompt_tokens", 1.5), ("status", "weird"), ("latency_ms", "x")):
        status, body = await post(client, [{**SPAN, field: value}])
        assert status == 400, (field, value)
        assert field in body["error"] or "status" in body["error"] or "enum" in body["error"], body


async def test_malformed_json_is_400(client: TestClient[Any, Any]) -> None:
    response = await client.post("/spans", data=b'[{"model": ', headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "malformed JSON" in (await response.json())["error"]


async def test_empty_body_is_400(client: TestClient[Any, Any]) -> None:
    response = await client.post("/spans", data=b"")
    assert response.status == 400
    assert "error" in await response.json()


async def test_batch_over_max_batch_size_is_413(make_client: MakeClient) -> None:
    client = await make_client("http_server:\n  max_batch_size: 3\n")
    status, body = await post(client, [SPAN] * 4)
    assert status == 413
    assert "max_batch_size 3" in body["error"]
    assert (await post(client, [SPAN] * 3))[0] == 202


async def test_default_max_batch_size_is_1000(client: TestClient[Any, Any]) -> None:
    assert (await post(client, [SPAN] * 1001))[0] == 413
    assert (await post(client, [SPAN] * 1000)) == (202, {"accepted": 1000})


async def test_float_token_counts_that_are_whole_are_accepted(client: TestClient[Any, Any]) -> None:
    status, _ = await post(client, [{**SPAN, "prompt_tokens": 512.0, "latency_ms": 12.5}])
    assert status == 202


async def test_span_far_in_the_future_is_rejected(client: TestClient[Any, Any]) -> None:
    future = format_ms(now_ms() + 3_600_000)
    status, body = await post(client, [SPAN, {**SPAN, "started_at": future}])
    assert status == 400
    assert "span 1" in body["error"] and "future" in body["error"]


async def test_span_older_than_retention_is_rejected(client: TestClient[Any, Any]) -> None:
    old = format_ms(now_ms() - 40 * 86_400_000)
    status, body = await post(client, [{**SPAN, "started_at": old}])
    assert status == 400
    assert "retention" in body["error"]


async def test_rejected_batch_counts_nothing(client: TestClient[Any, Any]) -> None:
    await post(client, [SPAN, {"model": "x"}])
    body = await (await client.get("/metrics")).json()
    assert body["span_count"] == 0


async def test_unknown_model_cost_is_null_not_zero(client: TestClient[Any, Any]) -> None:
    span = {**SPAN, "model": "in-house-model-v7", "provider": "", "cost_usd": None}
    span.pop("cost_usd")
    assert (await post(client, [span]))[0] == 202
    trace = await (await client.get("/traces", params={"model": "in-house-model-v7"})).json()
    trace_id = trace["traces"][0]["trace_id"]
    spans = (await (await client.get(f"/traces/{trace_id}")).json())["spans"]
    assert spans[0]["cost_usd"] is None
    cost = await (await client.get("/metrics/cost")).json()
    assert cost["unpriced_span_count"] == 1 and cost["total_usd"] == 0
    assert cost["per_call_usd"] is None
    exposition = await (await client.get("/metrics/prometheus")).text()
    assert 'tokentrace_unpriced_spans_total{model="in-house-model-v7",provider=""} 1.0' in exposition


async def test_known_model_is_priced_from_the_table(client: TestClient[Any, Any]) -> None:
    span = {k: v for k, v in SPAN.items() if k != "cost_usd"}
    assert (await post(client, [span]))[0] == 202
    cost = await (await client.get("/metrics/cost")).json()
    assert cost["total_usd"] > 0 and cost["unpriced_span_count"] == 0


async def test_price_override_from_config_wins(make_client: MakeClient) -> None:
    client = await make_client("prices:\n  gpt-4o:\n    input: 1.0\n    output: 2.0\n")
    span = {k: v for k, v in SPAN.items() if k != "cost_usd"}
    assert (await post(client, [span]))[0] == 202
    cost = await (await client.get("/metrics/cost")).json()
    assert cost["total_usd"] == round((512 * 1.0 + 128 * 2.0) / 1e6, 9)
