"""GET /stats: the MIST-era totals (README, "Seed 001 (MIST) compatibility") against a brute-force oracle over the spans posted."""

from __future__ import annotations

import json
import math
import random
import zlib
from typing import Any

from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient
from tests.api.test_openapi import assert_conforms
from tokentrace.api.embedded import price_table
from tokentrace.config import parse_config
from tokentrace.core.aggregate import to_nanos
from tokentrace.core.timefmt import format_ms, now_ms

SEED_FIELDS = {
    "total_spans",
    "error_count",
    "error_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_avg_ms",
    "total_tokens_in",
    "total_tokens_out",
    "total_cost_usd",
    "by_operation",
}
MODELS = [("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-5-haiku-20241022", "anthropic"), ("mine", "")]
OPERATIONS = ["infer", "embed", "rerank", "eval.run"]


def mist_message(source: str, payload: dict[str, Any]) -> bytes:
    raw = json.dumps(payload).encode()
    envelope = {"version": "1", "id": "x", "source": source, "type": "trace.span", "timestamp_ns": 0}
    return json.dumps(envelope).encode()[:-1] + b',"payload":' + raw + b',"checksum":%d}' % zlib.crc32(raw)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


async def test_empty_server(client: TestClient[Any, Any]) -> None:
    response = await client.get("/stats")
    assert response.status == 200
    body = await response.json()
    assert_conforms("/stats", "get", 200, body)
    assert body == {
        "total_spans": 0,
        "error_count": 0,
        "error_rate": 0.0,
        "latency_p50_ms": None,
        "latency_p99_ms": None,
        "latency_avg_ms": None,
        "total_tokens_in": 0,
        "total_tokens_out": 0,
        "total_cost_usd": 0.0,
        "unpriced_span_count": 0,
        "by_operation": {},
    }


async def test_stats_equal_a_brute_force_oracle(client: TestClient[Any, Any]) -> None:
    """600 spans over the last five hours, half through /mist and half through /spans, some unpriced."""
    rng = random.Random(8)
    pricer = price_table(parse_config(""))
    now = now_ms()
    latencies: list[float] = []
    costs: list[float] = []
    tokens_in = tokens_out = errors = unpriced = 0
    by_operation: dict[str, dict[str, int]] = {}
    for i in range(600):
        model, provider = rng.choice(MODELS)
        status = rng.choice(["ok", "ok", "ok", "error", "timeout"])
        prompt, comp = rng.randrange(0, 5000), rng.randrange(0, 2000)
        latency_ns = rng.randrange(1, 60_000) * 1_000_000 + rng.randrange(1_000_000)
        start_ms = now - rng.randrange(5 * 3600 * 1000)
        given_cost = round(rng.uniform(0, 0.5), 9) if rng.random() < 0.3 else None
        cost = given_cost if given_cost is not None else pricer.cost(model, prompt, comp, provider=provider or None)
        if i % 2:
            operation = rng.choice(OPERATIONS)
            attrs: dict[str, Any] = {"model": model, "provider": provider, "tokens_in": prompt, "tokens_out": comp}
            if given_cost is not None:
                attrs["cost_usd"] = given_cost
            start_ns = start_ms * 1_000_000 + rng.randrange(1_000_000)
            span = {"trace_id": f"m{i}", "operation": operation, "start_ns": start_ns, "end_ns": start_ns + latency_ns}
            response = await client.post("/mist", data=mist_message("svc", {**span, "status": status, "attrs": attrs}))
            group = by_operation.setdefault(operation, {"count": 0, "errors": 0})
            group["count"] += 1
            group["errors"] += status == "error"
            latencies.append(latency_ns / 1e6)
        else:
            body = {"model": model, "provider": provider, "prompt_tokens": prompt, "comp_tokens": comp}
            body |= {"status": status, "latency_ms": latency_ns / 1e6, "started_at": format_ms(start_ms)}
            if given_cost is not None:
                body["cost_usd"] = given_cost
            response = await client.post("/spans", json=body)
            latencies.append(latency_ns / 1e6)
        assert response.status == 202, await response.text()
        tokens_in += prompt
        tokens_out += comp
        errors += status == "error"
        if cost is None:
            unpriced += 1
        else:
            costs.append(cost)
    assert unpriced > 0 and costs

    response = await client.get("/stats")
    stats = await response.json()
    assert_conforms("/stats", "get", 200, stats)
    assert set(stats) >= SEED_FIELDS
    assert stats["total_spans"] == 600
    assert stats["error_count"] == errors
    assert stats["error_rate"] == round(errors / 600, 6)
    assert stats["total_tokens_in"] == tokens_in
    assert stats["total_tokens_out"] == tokens_out
    assert stats["total_cost_usd"] == round(sum(to_nanos(c) for c in costs) / 1e9, 9)
    assert stats["unpriced_span_count"] == unpriced
    assert stats["by_operation"] == by_operation
    for field, q in (("latency_p50_ms", 0.5), ("latency_p99_ms", 0.99)):
        want = quantile(latencies, q)
        assert abs(stats[field] - want) <= 0.01 * want, (field, stats[field], want)
    assert abs(stats["latency_avg_ms"] - sum(latencies) / 600) <= 0.006

    # The same aggregates as /metrics: every field equals the scalar metric of its name over the whole range.
    for name in SEED_FIELDS - {"by_operation"}:
        metric = await (await client.get(f"/metrics/{name}", params={"window": "30d"})).json()
        assert metric["rate" if name == "error_rate" else "value"] == stats[name], name
    grouped = await client.get("/metrics/error_count", params={"groupby": "mist.operation", "window": "6h"})
    assert (await grouped.json())["by_mist.operation"] == {op: g["errors"] for op, g in by_operation.items()}


async def test_stats_survive_a_restart(make_client: MakeClient, tmp_path: Any) -> None:
    data = tmp_path / "kept"
    first = await make_client(data_dir=data)
    start_ns = (now_ms() - 60_000) * 1_000_000
    payload = {"trace_id": "a", "operation": "infer", "start_ns": start_ns, "end_ns": start_ns + 2_000_000_000}
    payload |= {"status": "error", "attrs": {"model": "gpt-4o", "tokens_in": 3, "tokens_out": 4, "cost_usd": 0.5}}
    assert (await first.post("/mist", data=mist_message("svc", payload))).status == 202
    before = await (await first.get("/stats")).json()
    await first.close()
    second = await make_client(data_dir=data)
    after = await (await second.get("/stats")).json()
    assert after == before
    assert (after["total_spans"], after["error_rate"], after["total_cost_usd"]) == (1, 1.0, 0.5)
    assert after["by_operation"] == {"infer": {"count": 1, "errors": 1}}
    assert after["latency_avg_ms"] == 2000.0
