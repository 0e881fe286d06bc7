"""Inputs the fuzz pass found: each must be a 400 naming the field, never a 500 or a poisoned store."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import MakeClient
from tokentrace.api.context import CONTEXT
from tokentrace.api.middleware import error_middleware
from tokentrace.core.limits import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
    MAX_ATTRIBUTES_CHARS,
    MAX_ERROR_CHARS,
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_NAME_CHARS,
)


@pytest.mark.parametrize(
    ("span", "field"),
    [
        ({"model": "m", "prompt_tokens": 18446744073709551616}, "prompt_tokens"),
        ({"model": "m", "prompt_tokens": 1e300}, "prompt_tokens"),
        ({"model": "m", "total_tokens": 1, "cost_usd": 1e308}, "cost_usd"),
        ({"model": "m", "total_tokens": 1, "latency_ms": 1e20}, "latency_ms"),
        ({"model": "m", "total_tokens": 1, "attributes": {"eval.score": 1e308}}, "eval.score"),
        ({"model": "m", "total_tokens": 1, "started_at": "0001-10-01T00:00:00Z"}, "started_at"),
        ({"model": "m", "total_tokens": 1, "ended_at": "0999-12-31T23:59:59+14:00"}, "ended_at"),
        ({"model": "a\u001fb", "total_tokens": 1}, "model"),
        ({"model": "m", "provider": "p\n", "total_tokens": 1}, "provider"),
        ({"model": "m", "caller": "\x7f", "total_tokens": 1}, "caller"),
        ({"model": "m", "total_tokens": 1, "attributes": {"request": 18446744073709551616}}, "attributes.request"),
        ({"model": "m", "total_tokens": 1, "attributes": {"request": -(2**63) - 1}}, "attributes.request"),
    ],
)
async def test_out_of_range_spans_are_400(client: TestClient[Any, Any], span: dict[str, Any], field: str) -> None:
    response = await client.post("/spans", json=[span])
    assert response.status == 400
    assert field in (await response.json())["error"]
    assert (await client.get("/metrics/prometheus")).status == 200


async def test_huge_latency_with_an_end_time_is_400(client: TestClient[Any, Any]) -> None:
    span = {"model": "m", "total_tokens": 1, "ended_at": "2026-11-25T19:00:00Z", "latency_ms": 1e15}
    response = await client.post("/spans", json=[span])
    assert response.status == 400


@pytest.mark.parametrize("duration", [1e300, "99999999999999999h", 1.2890799045178532e16])
async def test_silence_durations_are_bounded(client: TestClient[Any, Any], duration: Any) -> None:
    rule = {"name": "r", "metric": "span_count", "op": "gt", "threshold": 1, "window": "1h"}
    assert (await client.post("/alerts", json=rule)).status == 201
    response = await client.post("/alerts/r/silence", json={"duration": duration})
    assert response.status == 400
    assert "duration" in (await response.json())["error"]


async def test_a_huge_rule_window_is_rejected_or_bounded(client: TestClient[Any, Any]) -> None:
    rule = {"name": "r2", "metric": "error_rate", "op": "gt", "threshold": 0.5, "window": 1e300}
    response = await client.post("/alerts", json=rule)
    assert response.status == 400
    long_rule = {**rule, "window": "3650d"}
    assert (await client.post("/alerts", json=long_rule)).status == 201
    # Evaluating a ten-year window against 30 days of retention finishes at once.
    await asyncio.wait_for(asyncio.to_thread(client.app[CONTEXT].alerts.evaluate), timeout=10)  # type: ignore[union-attr]
    assert (await client.get("/health")).status == 200


async def test_a_log_record_that_cannot_be_applied_does_not_keep_the_server_down(
    make_client: MakeClient, tmp_path: Path
) -> None:
    from tokentrace.api.stores.quarantine import Quarantine
    from tokentrace.api.stores.wal import WriteAheadLog

    data = tmp_path / "poisoned"
    wal = WriteAheadLog(data / "wal", Quarantine(data))
    wal.start()
    future_write = b"\x81\xa1v\x02"  # a msgpack {"v": 2}: a wire version this build does not know
    await wal.write(future_write, lambda: None)
    await wal.close()
    client = await make_client(data_dir=data)
    assert (await client.get("/health")).status == 200
    assert client.app[CONTEXT].store.replay_failures == 1  # type: ignore[attr-defined]


async def test_an_unreadable_body_is_a_400_envelope_not_a_500(aiohttp_client: Any) -> None:
    """aiohttp raises RequestPayloadError for a body it cannot inflate (corrupt gzip); every route answers
    400. (aiohttp may also drop the connection itself; what matters is that nothing is logged as a 500.)"""

    async def read(request: web.Request) -> web.Response:
        raise web.RequestPayloadError("Can not decode content-encoding: gzip")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/spans", read)
    client = await aiohttp_client(app)
    response = await client.post("/spans", data=b"{}")
    assert response.status == 400
    assert "unreadable request body" in (await response.json())["error"]


def _mist(attrs: str) -> bytes:
    now = time.time_ns()
    payload = f'{{"trace_id": "t1", "span_id": "s1", "start_ns": {now - 10**9}, "end_ns": {now}, "attrs": {attrs}}}'
    return f'{{"version": "1", "id": "m1", "source": "app", "type": "trace.span", "payload": {payload}}}'.encode()


@pytest.mark.parametrize("depth", [1000, 100_000])
async def test_mist_attrs_nested_deep_are_400(client: TestClient[Any, Any], depth: int) -> None:
    """Was a 500: RecursionError in the envelope decoder."""
    for nested in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        response = await client.post("/mist", data=_mist(f'{{"model": "m", "tokens_in": 1, "deep": {nested}}}'))
        assert response.status == 400, await response.text()
        assert "payload" in (await response.json())["error"]
    assert (await client.post("/mist", data=_mist('{"model": "m", "tokens_in": 1, "x": [[1]]}'))).status == 202


@pytest.mark.parametrize("depth", [1000, 100_000])
async def test_spans_nested_deep_are_400(client: TestClient[Any, Any], depth: int) -> None:
    for body in ("[" * depth + "]" * depth, '{"model": "m", "total_tokens": 1, "attributes": {"a": ' + "[" * depth):
        response = await client.post("/spans", data=body.encode())
        assert response.status == 400, await response.text()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ended_at": 9 * 365 * 86_400_000}, "ended_at"),  # only ended_at, nine years ahead: was a 9-year trace
        ({"started_at": -60_000, "ended_at": 86_400_000}, "ended_at"),  # a day-long call ending tomorrow
        ({"started_at": -60_000, "latency_ms": 86_400_000}, "ended_at"),  # ends a day from now
    ],
)
async def test_every_timestamp_obeys_the_future_skew(
    client: TestClient[Any, Any], fields: dict[str, int], field: str
) -> None:
    now = int(time.time() * 1000)
    span: dict[str, Any] = {"model": "m", "total_tokens": 1}
    for key, offset in fields.items():
        span[key] = _iso(now + offset) if key.endswith("_at") else offset
    response = await client.post("/spans", json=[span])
    assert response.status == 400, await response.text()
    assert field in (await response.json())["error"] and "future" in (await response.json())["error"]
    assert (await client.get("/traces")).status == 200
    assert (await (await client.get("/traces")).json())["total"] == 0
    # Within the skew (4 minutes ahead) is still accepted.
    ok = {"model": "m", "total_tokens": 1, "ended_at": _iso(now + 240_000)}
    assert (await client.post("/spans", json=[ok])).status == 202


async def test_mist_end_far_in_the_future_is_400(client: TestClient[Any, Any]) -> None:
    now = time.time_ns()
    payload = f'{{"trace_id": "t1", "start_ns": {now}, "end_ns": {now + 86_400 * 10**9}, "attrs": {{}}}}'
    body = f'{{"version": "1", "id": "m1", "source": "a", "type": "trace.span", "payload": {payload}}}'
    response = await client.post("/mist", data=body.encode())
    assert response.status == 400
    assert "future" in (await response.json())["error"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"model": "m" * (MAX_LABEL_CHARS + 1)}, "model"),
        ({"model": "m" * (10 << 20)}, "model"),  # was a 160 MB Prometheus exposition
        ({"provider": "p" * (MAX_LABEL_CHARS + 1)}, "provider"),
        ({"caller": "c" * (MAX_LABEL_CHARS + 1)}, "caller"),
        ({"name": "n" * (MAX_NAME_CHARS + 1)}, "name"),
        ({"trace_id": "t" * (MAX_ID_CHARS + 1)}, "trace_id"),
        ({"span_id": "s" * (MAX_ID_CHARS + 1)}, "span_id"),
        ({"parent_span_id": "s" * (MAX_ID_CHARS + 1)}, "parent_span_id"),
        ({"status": "error", "error": "e" * (MAX_ERROR_CHARS + 1)}, "error"),
        ({"attributes": {"k" * (MAX_ATTRIBUTE_KEY_CHARS + 1): 1}}, "attributes"),
        ({"attributes": {"k": "v" * (MAX_ATTRIBUTE_VALUE_CHARS + 1)}}, "attributes.k"),
        ({"attributes": {f"k{i}": i for i in range(MAX_ATTRIBUTES + 1)}}, "attributes"),
        ({"attributes": {f"k{i}": "v" * MAX_ATTRIBUTE_VALUE_CHARS for i in range(9)}}, "attributes"),
    ],
)
async def test_text_over_its_cap_is_400_naming_the_field(
    client: TestClient[Any, Any], extra: dict[str, Any], field: str
) -> None:
    span = {"model": "m", "total_tokens": 1, **extra}
    response = await client.post("/spans", json=[{"model": "fine", "total_tokens": 1}, span])
    assert response.status == 400
    error = (await response.json())["error"]
    assert error.startswith("span 1: " + field), error
    assert len(error) < 500
    exposition = await (await client.get("/metrics/prometheus")).read()
    assert len(exposition) < 100_000 and b"fine" not in exposition  # the batch was rejected whole
    # Cut to the caps, the span is accepted.
    at_cap = {k: _cut(k, v) for k, v in extra.items()}
    response = await client.post("/spans", json=[{"model": "m", "total_tokens": 1, **at_cap}])
    assert response.status == 202, await response.text()


_CAPS = {"name": MAX_NAME_CHARS, "error": MAX_ERROR_CHARS}


def _cut(key: str, value: Any) -> Any:
    """``value`` cut down to the caps of ``key``."""
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        chars = 0
        for k, v in list(value.items())[:MAX_ATTRIBUTES]:
            k, v = k[:MAX_ATTRIBUTE_KEY_CHARS], _cut("value", v)
            chars += len(k) + (len(v) if isinstance(v, str) else 0)
            if chars > MAX_ATTRIBUTES_CHARS:
                break
            kept[k] = v
        return kept
    if isinstance(value, str):
        return value[: _CAPS.get(key, MAX_ATTRIBUTE_VALUE_CHARS if key == "value" else MAX_LABEL_CHARS)]
    return value


async def test_mist_text_over_its_cap_is_400(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/mist", data=_mist('{"model": "' + "m" * (MAX_LABEL_CHARS + 1) + '", "tokens_in": 1}')
    )
    assert response.status == 400
    assert "model" in (await response.json())["error"]


async def test_distinct_models_beyond_the_cap_fold_into_overflow(make_client: MakeClient) -> None:
    """Was: 100k distinct models made a 128 MB exposition rendered in 21 s. Now the label sets are capped,
    the excess counted exactly under ``__overflow__`` and the folds counted."""
    client = await make_client("aggregation: {max_models: 50, max_callers: 20, max_series: 200}")
    for batch in range(3):
        spans = [
            {"model": f"model-{batch}-{i}", "caller": f"svc-{i % 40}", "prompt_tokens": 1, "cost_usd": 0.5}
            for i in range(1000)
        ]
        assert (await client.post("/spans", json=spans)).status == 202
    text = await (await client.get("/metrics/prometheus")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    cost = families["tokentrace_cost"].samples
    assert len({s.labels["model"] for s in cost}) <= 51 and len({s.labels["caller"] for s in cost}) <= 21
    assert len(cost) <= 201
    assert sum(s.value for s in cost) == 1500.0  # every span still counted, to the cent
    spans_total = sum(s.value for s in families["tokentrace_spans"].samples)
    assert spans_total == 3000
    folded = {s.labels["label"]: s.value for s in families["tokentrace_folded_labels"].samples}
    assert folded["model"] == 3000 - 50
    assert len(text) < 200_000
    by_model = await (await client.get("/metrics?window=1h&groupby=model")).json()
    assert "__overflow__" in json.dumps(by_model)
    [summary] = (await (await client.get("/traces?model=__overflow__&limit=1")).json())["traces"]
    trace = await (await client.get(f"/traces/{summary['trace_id']}")).json()
    assert trace["spans"][0]["attributes"]["tokentrace.overflow.model"].startswith("model-")


@pytest.mark.parametrize("path", ["/spans", "/mist"])
async def test_compressed_bodies_are_read_and_bombs_are_413(make_client: MakeClient, path: str) -> None:
    """Every ingest route inflates gzip itself (bounded), not only OTLP."""
    client = await make_client("http_server: {max_body_bytes: 1048576}")
    body = (
        _mist('{"model": "m", "tokens_in": 1}')
        if path == "/mist"
        else json.dumps([{"model": "m", "prompt_tokens": 1}]).encode()
    )
    response = await client.post(path, data=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert response.status == 202, await response.text()
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = b"".join(bomb.compress(b" " * (1 << 20)) for _ in range(64)) + bomb.flush()
    response = await client.post(path, data=data, headers={"Content-Encoding": "gzip"})
    assert response.status == 413
    response = await client.post(path, data=body, headers={"Content-Encoding": "br"})
    assert response.status == 415
