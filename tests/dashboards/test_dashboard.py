"""``dashboards/grafana.json``: generated without drift, and shaped as Grafana 10/11 imports it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.dashboards.expressions import DASHBOARD, ROOT, dashboard_expressions, label_values_queries

GENERATOR = ROOT / "dashboards" / "generate.py"
SPEC_PANELS = ("Cost over time", "Latency heatmap", "Model usage", "Quality score", "Alert history")
EXTRA_PANELS = ("Latency p50 / p95 / p99 per model", "Error ratio", "Cost per successful call", "Tokens per model")


def _generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}


def test_committed_json_is_what_the_generator_writes() -> None:
    checked = _generate("--check")
    assert checked.returncode == 0, checked.stderr


def test_check_reports_drift(tmp_path: Path) -> None:
    stale = tmp_path / "grafana.json"
    stale.write_text(DASHBOARD.read_text().replace('"Error ratio"', '"Hand-edited"'))
    checked = _generate("--check", "--output", str(stale))
    assert checked.returncode == 1
    assert "Hand-edited" in checked.stderr and "is stale" in checked.stderr
    assert _generate("--output", str(stale)).returncode == 0
    assert stale.read_text() == DASHBOARD.read_text()


def test_dashboard_header(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "tokentrace-overview"
    assert dashboard["title"] and dashboard["time"] == {"from": "now-6h", "to": "now"}
    assert "id" not in dashboard or dashboard["id"] is None  # importable into any Grafana


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "model", "provider", "caller"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for query in label_values_queries():
        variable = variables[query.variable]
        assert query.label == query.variable
        assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert {q.metric for q in label_values_queries()} == {"tokentrace_spans_total", "tokentrace_cost_total"}


def test_panels_and_layout(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    for title in SPEC_PANELS + EXTRA_PANELS:
        assert title in panels, title
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells


def test_spec_panels(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    cost = panels["Cost over time"]
    assert cost["type"] == "timeseries"
    assert re.search(r"rate\(tokentrace_cost_total\{.*\}\[\$__rate_interval\]\)\) \* 60$", cost["targets"][0]["expr"])
    heat = panels["Latency heatmap"]
    assert heat["type"] == "heatmap" and heat["options"]["calculate"] is False
    assert "tokentrace_latency_ms_bucket" in heat["targets"][0]["expr"] and heat["targets"][0]["format"] == "heatmap"
    usage = panels["Model usage"]["fieldConfig"]["defaults"]["custom"]
    assert usage["drawStyle"] == "bars" and usage["stacking"]["mode"] == "normal"
    quality = panels["Quality score"]["fieldConfig"]["defaults"]
    assert quality["custom"]["thresholdsStyle"]["mode"] == "line"
    assert {"value": 0.75, "color": "green"} in quality["thresholds"]["steps"]
    history = panels["Alert history"]
    assert history["type"] == "table" and "tokentrace_alert_firings_total" in history["targets"][0]["expr"]
    quantiles = [t["expr"] for t in panels["Latency p50 / p95 / p99 per model"]["targets"]]
    assert [re.findall(r"^histogram_quantile\(([0-9.]+),", q) for q in quantiles] == [["0.5"], ["0.95"], ["0.99"]]


def test_every_query_uses_the_datasource_and_filters(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard).values():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    for expression in dashboard_expressions():
        expr = expression.expr
        for metric in re.findall(r"(tokentrace_[a-z_]+)\{", expr):
            assert 'model=~"$model"' in expr, f"{expression.where}: {metric} ignores $model"
        if "tokentrace_cost_total" in expr and "status=" not in expr and "/" not in expr:
            assert 'caller=~"$caller"' in expr, f"{expression.where} ignores $caller"
        assert expression.labels, f"{expression.where} has no legend labels"
