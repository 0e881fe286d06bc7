"""GET /metrics and /metrics/{name}: the bodies of api/openapi.yaml, checked against a recount of what was sent."""

from __future__ import annotations

import math
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tokentrace.core.sketch import RELATIVE_ACCURACY
from tokentrace.core.timefmt import format_ms, now_ms


def make_spans() -> list[dict[str, Any]]:
    spans = []
    for i in range(200):
        model = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet")[i % 3]
        spans.append(
            {
                "model": model,
                "provider": "anthropic" if model.startswith("claude") else "openai",
                "caller": ("svc-a", "svc-b")[i % 2],
                "prompt_tokens": 100 + i,
                "comp_tokens": 10 + i % 7,
                "cost_usd": round(0.001 * (1 + i % 5), 6),
                "latency_ms": 50 + (i * 37) % 4000,
                "status": "error" if i % 25 == 0 else ("timeout" if i % 40 == 1 else "ok"),
                "attributes": {"workflow": ("chat", "summary")[i % 2]}
                | ({"eval.score": (i % 10) / 10} if i % 3 == 0 else {}),
            }
        )
    return spans


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def close(got: float, want: float) -> bool:
    return abs(got - want) <= RELATIVE_ACCURACY * abs(want) + 0.01


@pytest.fixture
async def loaded(client: TestClient[Any, Any]) -> TestClient[Any, Any]:
    response = await client.post("/spans", json=make_spans())
    assert response.status == 202
    return client


async def test_full_metrics_body(loaded: TestClient[Any, Any]) -> None:
    spans = make_spans()
    response = await loaded.get("/metrics", params={"window": "1h"})
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"window", "span_count", "cost", "tokens", "latency", "errors", "quality"}
    assert body["window"] == "1h"
    assert body["span_count"] == len(spans)
    total_cost = sum(s["cost_usd"] for s in spans)
    assert body["cost"]["total_usd"] == pytest.approx(total_cost, abs=1e-9)
    assert body["cost"]["per_call_usd"] == pytest.approx(total_cost / len(spans), abs=1e-9)
    by_model: dict[str, float] = {}
    for s in spans:
        by_model[s["model"]] = by_model.get(s["model"], 0) + s["cost_usd"]
    assert body["cost"]["by_model"] == pytest.approx(by_model, abs=1e-9)
    assert body["tokens"] == {
        "prompt_total": sum(s["prompt_tokens"] for s in spans),
        "completion_total": sum(s["comp_tokens"] for s in spans),
        "total": sum(s["prompt_tokens"] + s["comp_tokens"] for s in spans),
    }
    latencies = [s["latency_ms"] for s in spans]
    for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        assert close(body["latency"][key], quantile(latencies, q)), key
    errors = sum(s["status"] == "error" for s in spans)
    assert body["errors"]["count"] == errors
    assert body["errors"]["rate"] == pytest.approx(errors / len(spans), abs=1e-6)
    scores = [s["attributes"]["eval.score"] for s in spans if "eval.score" in s["attributes"]]
    assert body["quality"]["scored_span_count"] == len(scores)
    assert body["quality"]["score_avg"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
    assert close(body["quality"]["score_p10"], quantile(scores, 0.10))


async def test_cost_metric_body(loaded: TestClient[Any, Any]) -> None:
    body = await (await loaded.get("/metrics/cost", params={"window": "24h"})).json()
    assert {"window", "total_usd", "per_call_usd", "by_model", "span_count"} <= set(body)
    assert body["window"] == "24h" and body["span_count"] == 200


async def test_latency_grouped_by_model(loaded: TestClient[Any, Any]) -> None:
    spans = make_spans()
    body = await (await loaded.get("/metrics/latency", params={"window": "1h", "groupby": "model"})).json()
    assert body["window"] == "1h"
    assert set(body["by_model"]) == {"gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"}
    for model, group in body["by_model"].items():
        latencies = [s["latency_ms"] for s in spans if s["model"] == model]
        assert close(group["p95_ms"], quantile(latencies, 0.95))
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(group)


async def test_groupby_attribute_and_caller(loaded: TestClient[Any, Any]) -> None:
    by_workflow = await (await loaded.get("/metrics/tokens", params={"groupby": "workflow"})).json()
    assert set(by_workflow["by_workflow"]) == {"chat", "summary"}
    assert sum(g["span_count"] for g in by_workflow["by_workflow"].values()) == 200
    everything = await (await loaded.get("/metrics", params={"groupby": "caller"})).json()
    assert set(everything["by_caller"]) == {"svc-a", "svc-b"}
    assert everything["by_caller"]["svc-a"]["span_count"] == 100


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("total_spans", 200),
        ("error_count", 8),
        ("total_tokens_in", sum(100 + i for i in range(200))),
        ("total_tokens_out", sum(10 + i % 7 for i in range(200))),
    ],
)
async def test_seed_scalar_metrics(loaded: TestClient[Any, Any], name: str, expected: int) -> None:
    body = await (await loaded.get(f"/metrics/{name}")).json()
    assert body == {"window": "1h", "name": name, "value": expected}


async def test_error_rate_metric(loaded: TestClient[Any, Any]) -> None:
    body = await (await loaded.get("/metrics/error_rate")).json()
    assert body["rate"] == pytest.approx(8 / 200) and body["count"] == 8


async def test_unknown_metric_is_404(loaded: TestClient[Any, Any]) -> None:
    response = await loaded.get("/metrics/nonsense")
    assert response.status == 404
    assert "unknown metric" in (await response.json())["error"]


@pytest.mark.parametrize("window", ["1x", "", "-1h", "0s", "abc", "1h30"])
async def test_invalid_window_is_400(loaded: TestClient[Any, Any], window: str) -> None:
    response = await loaded.get("/metrics", params={"window": window})
    assert response.status == 400
    assert "window" in (await response.json())["error"]


@pytest.mark.parametrize("window", ["1h", "6h", "24h", "7d", "30d", "90m", "1h30m"])
async def test_supported_windows(loaded: TestClient[Any, Any], window: str) -> None:
    body = await (await loaded.get("/metrics", params={"window": window})).json()
    assert body["window"] == window and body["span_count"] == 200


async def test_window_counts_by_event_time(client: TestClient[Any, Any]) -> None:
    """A span back-filled from two hours ago shows up in a 6h window but not in a 1h window."""
    old = format_ms(now_ms() - 2 * 3_600_000)
    response = await client.post("/spans", json=[{"model": "m", "prompt_tokens": 1, "started_at": old}])
    assert response.status == 202
    one_hour = await (await client.get("/metrics/total_spans", params={"window": "1h"})).json()
    six_hours = await (await client.get("/metrics/total_spans", params={"window": "6h"})).json()
    assert (one_hour["value"], six_hours["value"]) == (0, 1)


async def test_empty_window_has_nulls_not_zeros(client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/metrics")).json()
    assert body["span_count"] == 0
    assert body["latency"]["p50_ms"] is None
    assert body["quality"]["score_avg"] is None
    assert body["cost"]["per_call_usd"] is None
