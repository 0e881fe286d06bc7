"""/alerts over the embedded server: the bodies and statuses of api/openapi.yaml, persistence, firing from real spans."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient
from tokentrace.api.context import CONTEXT

RULE = {
    "name": "model-latency-alert",
    "metric": "latency_p95",
    "op": "gt",
    "threshold": 4000,
    "window": "30m",
    "cooldown": "1h",
    "min_spans": 10,
    "filter": {"model": "gpt-4o"},
    "delivery": {"type": "http", "url": "http://127.0.0.1:9/alerts"},
}
SPEC_FIELDS = {
    "name",
    "metric",
    "op",
    "threshold",
    "window",
    "last_evaluated",
    "last_fired",
    "current_value",
    "firing",
    "silenced",
    "silenced_until",
}


async def test_create_list_silence_delete(client: TestClient[Any, Any]) -> None:
    created = await client.post("/alerts", json=RULE)
    assert created.status == 201
    body = await created.json()
    assert body["name"] == "model-latency-alert"
    assert re.fullmatch(r"alert_[0-9a-f]{8}", body["rule_id"])
    listed = await (await client.get("/alerts")).json()
    assert [a["name"] for a in listed] == ["model-latency-alert"]
    assert set(listed[0]) >= SPEC_FIELDS
    assert listed[0]["firing"] is False and listed[0]["silenced_until"] is None
    silenced = await client.post("/alerts/model-latency-alert/silence", json={"duration": "2h"})
    assert silenced.status == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", (await silenced.json())["silenced_until"])
    assert (await (await client.get("/alerts")).json())[0]["silenced"] is True
    assert (await client.delete("/alerts/model-latency-alert")).status == 204
    assert (await client.delete("/alerts/model-latency-alert")).status == 404


async def test_errors(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/alerts", json=RULE)).status == 201
    duplicate = await client.post("/alerts", json=RULE)
    assert duplicate.status == 409
    for field, value in (("metric", "vibes"), ("op", "approximately"), ("window", "soon"), ("threshold", "x")):
        response = await client.post("/alerts", json={**RULE, "name": "other", field: value})
        assert response.status == 400, field
        assert field in (await response.json())["error"]
    unknown = await client.post("/alerts/nope/silence", json={"duration": "1h"})
    assert unknown.status == 404
    bad = await client.post("/alerts/model-latency-alert/silence", json={"duration": "whenever"})
    assert bad.status == 400


async def test_config_rules_cannot_be_deleted(make_client: MakeClient) -> None:
    client = await make_client(
        "alerts:\n  - name: hourly-cost-spike\n    metric: total_cost\n    op: gt\n    threshold: 5\n    window: 1h\n"
    )
    response = await client.delete("/alerts/hourly-cost-spike")
    assert response.status == 409
    assert "config" in (await response.json())["error"]


async def test_api_rules_and_silences_survive_restart(make_client: MakeClient, tmp_path: Path) -> None:
    data = tmp_path / "persist"
    first = await make_client(data_dir=data)
    assert (await first.post("/alerts", json=RULE)).status == 201
    assert (await first.post("/alerts/model-latency-alert/silence", json={"duration": "2h"})).status == 200
    await first.app[CONTEXT].store.close()  # type: ignore[attr-defined]
    second = await make_client(data_dir=data)
    listed = await (await second.get("/alerts")).json()
    assert [a["name"] for a in listed] == ["model-latency-alert"] and listed[0]["silenced"] is True


async def test_rule_fires_from_ingested_spans(client: TestClient[Any, Any]) -> None:
    rule = {**RULE, "name": "errors", "metric": "error_count", "op": "gte", "threshold": 3, "min_spans": 1}
    rule["filter"] = {}
    rule["delivery"] = {"type": "stdout"}
    assert (await client.post("/alerts", json=rule)).status == 201
    exposition = await (await client.get("/metrics/prometheus")).text()
    assert 'tokentrace_alert_firings_total{alert="errors",level="warning"} 0.0' in exposition
    spans = [{"model": "gpt-4o", "prompt_tokens": 1, "status": "error"}] * 3
    assert (await client.post("/spans", json=spans)).status == 202
    client.app[CONTEXT].alerts.evaluate()  # type: ignore[union-attr]
    state = (await (await client.get("/alerts")).json())[0]
    assert state["firing"] is True and state["current_value"] == 3
    exposition = await (await client.get("/metrics/prometheus")).text()
    assert 'tokentrace_alert_firings_total{alert="errors",level="warning"} 1.0' in exposition
