"""Inputs the fuzz pass found: each must be a 400 naming the field, never a 500 or a poisoned store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient
from tokentrace.api.context import CONTEXT
from tokentrace.api.middleware import error_middleware


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
