"""GET /traces, /traces/{id} and /traces/recent."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient
from tokentrace.core.timefmt import format_ms, now_ms


def trace_spans(trace_id: str, start_ms: int, model: str = "gpt-4o", status: str = "ok") -> list[dict[str, Any]]:
    root = {
        "trace_id": trace_id,
        "span_id": f"{trace_id}-root",
        "name": "research-agent",
        "model": model,
        "prompt_tokens": 100,
        "comp_tokens": 20,
        "cost_usd": 0.01,
        "latency_ms": 900,
        "caller": "agent",
        "status": status,
        "started_at": format_ms(start_ms),
        "attributes": {"request_id": f"req-{trace_id}"},
    }
    child = {
        **root,
        "span_id": f"{trace_id}-child",
        "parent_span_id": f"{trace_id}-root",
        "name": "retrieve",
        "status": "ok",
        "started_at": format_ms(start_ms + 100),
    }
    return [child, root]


async def test_trace_by_id_has_spec_fields(client: TestClient[Any, Any]) -> None:
    start = now_ms() - 10_000
    assert (await client.post("/spans", json=trace_spans("t1", start))).status == 202
    response = await client.get("/traces/t1")
    assert response.status == 200
    body = await response.json()
    assert body["trace_id"] == "t1"
    assert body["name"] == "research-agent"
    assert body["span_count"] == 2
    assert body["total_tokens"] == 240
    assert body["total_cost_usd"] == 0.02
    assert body["started_at"] == format_ms(start)
    assert [s["name"] for s in body["spans"]] == ["research-agent", "retrieve"]
    root, child = body["spans"]
    assert root["parent_span_id"] is None and child["parent_span_id"] == "t1-root"
    for field in ("span_id", "model", "provider", "prompt_tokens", "comp_tokens", "total_tokens", "cost_usd"):
        assert field in root
    assert root["ended_at"] == format_ms(start + 900)


async def test_unknown_trace_is_404(client: TestClient[Any, Any]) -> None:
    response = await client.get("/traces/nope")
    assert response.status == 404
    assert "not found" in (await response.json())["error"]


async def test_search_filters_and_order(client: TestClient[Any, Any]) -> None:
    base = now_ms() - 60_000
    batch = (
        trace_spans("a", base)
        + trace_spans("b", base + 1000, model="gpt-4o-mini", status="error")
        + trace_spans("c", base + 2000)
    )
    assert (await client.post("/spans", json=batch)).status == 202
    everything = await (await client.get("/traces")).json()
    assert [t["trace_id"] for t in everything["traces"]] == ["c", "b", "a"]
    assert everything["total"] == 3 and everything["limit"] == 20 and everything["offset"] == 0
    assert {"trace_id", "name", "started_at", "ended_at", "span_count", "total_cost_usd", "status"} <= set(
        everything["traces"][0]
    )
    by_attr = await (await client.get("/traces", params={"attr.request_id": "req-b"})).json()
    assert [t["trace_id"] for t in by_attr["traces"]] == ["b"]
    errors = await (await client.get("/traces", params={"model": "gpt-4o-mini", "status": "error"})).json()
    assert [t["trace_id"] for t in errors["traces"]] == ["b"]
    assert errors["traces"][0]["status"] == "error"
    page = await (await client.get("/traces", params={"limit": "1", "offset": "1"})).json()
    assert [t["trace_id"] for t in page["traces"]] == ["b"] and page["total"] == 3
    since = await (await client.get("/traces", params={"since": format_ms(base + 500)})).json()
    assert {t["trace_id"] for t in since["traces"]} == {"b", "c"}
    until = await (await client.get("/traces", params={"until": format_ms(base + 500)})).json()
    assert [t["trace_id"] for t in until["traces"]] == ["a"]


async def test_search_parameter_errors(client: TestClient[Any, Any]) -> None:
    for params in ({"limit": "201"}, {"limit": "0"}, {"limit": "x"}, {"status": "bad"}, {"since": "yesterday"}):
        response = await client.get("/traces", params=params)
        assert response.status == 400, params
        assert "error" in await response.json()


async def test_recent_spans_newest_first(client: TestClient[Any, Any]) -> None:
    base = now_ms() - 60_000
    await client.post("/spans", json=trace_spans("a", base) + trace_spans("b", base + 5000))
    body = await (await client.get("/traces/recent", params={"limit": "3"})).json()
    assert [s["span_id"] for s in body["spans"]] == ["b-child", "b-root", "a-child"]
    assert body["count"] == 3
    # The seed's shape: MIST trace spans, the tokentrace fields in attrs.
    first = body["spans"][0]
    assert first["trace_id"] == "b" and first["attrs"]["model"] == "gpt-4o" and first["start_ns"] > 0


async def test_max_spans_evicts_oldest_whole_traces(make_client: MakeClient) -> None:
    client = await make_client("storage:\n  max_spans: 4\n")
    base = now_ms() - 60_000
    for i, name in enumerate(("a", "b", "c")):
        await client.post("/spans", json=trace_spans(name, base + i))
    assert (await client.get("/traces/a")).status == 404
    assert (await client.get("/traces/c")).status == 200
    # Aggregates are not bounded by max_spans.
    assert (await (await client.get("/metrics/total_spans")).json())["value"] == 6
