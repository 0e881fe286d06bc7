"""A real Prometheus scrapes a real ``tokentrace serve --demo`` and runs every dashboard and rule query.

One stack per module (≈15 s): the server with 200 demo spans/s, Prometheus scraping it every second
with ``dashboards/prometheus-rules.yml`` loaded, plus one rejected ingest request and one span of an
unpriced model so the ingest panel has data, and an alert rule that fires at once for the alert panel. Each expression is then a test case: with Grafana's
variables substituted it must evaluate, and each of its top-level operands must return series that
carry the labels its legend, recording-rule name or alert annotations use.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.api.server_process import ServerProcess
from tests.dashboards.expressions import (
    RULES,
    Expression,
    LabelValues,
    dashboard_expressions,
    label_values_queries,
    operands,
    rule_expressions,
    substitute,
)
from tests.dashboards.prometheus import Prometheus, promtool
from tests.infra.procs import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

PROMETHEUS_PATH = "/metrics/prometheus"
UNPRICED_MODEL = "acme-unpriced-1"
CONFIG = """\
alerting:
  interval: 1s
alerts:
  - name: e2e-always
    metric: span_count
    op: ">"
    threshold: 0
    window: 1m
"""


@dataclass
class Stack:
    server: ServerProcess
    prometheus: Prometheus
    config_check: str


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _at_least(prometheus: Prometheus, expr: str, n: float) -> bool:
    return any(float(s["value"][1]) >= n for s in prometheus.query(expr))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    config = root / "tokentrace.yml"
    config.write_text(CONFIG)
    server = ServerProcess(root / "data", config, ["--demo", "--demo-rate", "200"])
    server.start()
    prometheus: Prometheus | None = None
    try:
        prometheus = Prometheus(root / "prometheus", [f"127.0.0.1:{server.port}"], PROMETHEUS_PATH, [RULES])
        checked = prometheus.check_config()
        assert checked.returncode == 0, checked.stdout + checked.stderr
        prometheus.start()
        procs = [prometheus.process]
        wait_for(lambda: _at_least(prometheus, 'up{job="tokentrace"}', 1), timeout=10, what="a scrape", procs=procs)
        assert _post(f"{server.url}/spans", b"not json") == 400
        unpriced = [{"model": UNPRICED_MODEL, "provider": "acme", "prompt_tokens": 10, "comp_tokens": 5}]
        assert _post(f"{server.url}/spans", json.dumps(unpriced).encode()) == 202
        # Enough samples for rate() over [1m] after the rejection, and recording rules evaluated on them.
        wait_for(
            lambda: (
                _at_least(prometheus, "count_over_time(tokentrace_ingest_rejections_total[1m])", 4)
                and _at_least(prometheus, "count_over_time(model:tokentrace_latency_ms_p95:rate5m[1m])", 3)
            ),
            timeout=20,
            what="scrapes and rule evaluations",
            procs=procs,
        )
        yield Stack(server, prometheus, checked.stdout)
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()


def _cases(expressions: list[Expression]) -> list[object]:
    return [pytest.param(e, id=e.where) for e in expressions]


def _check(prometheus: Prometheus, expression: Expression) -> None:
    expr = substitute(expression.expr)
    prometheus.query(expr)  # the whole expression evaluates (a condition may rightly be empty)
    for part in operands(expr):
        result = prometheus.query(part)
        assert result, f"{expression.where}: no data for {part}"
        for series in result:
            labels = {k for k, v in series["metric"].items() if k != "__name__" and v}
            missing = expression.labels - labels
            assert not missing, f"{expression.where}: {part} gave {series['metric']} without {sorted(missing)}"
            if expression.exact:
                assert labels == expression.labels, f"{expression.where}: {part} gave {series['metric']}"


@pytest.mark.parametrize("expression", _cases(dashboard_expressions()))
def test_dashboard_query_returns_labelled_data(stack: Stack, expression: Expression) -> None:
    _check(stack.prometheus, expression)


@pytest.mark.parametrize("expression", _cases(rule_expressions()))
def test_rule_expression_returns_labelled_data(stack: Stack, expression: Expression) -> None:
    _check(stack.prometheus, expression)


@pytest.mark.parametrize("variable", label_values_queries(), ids=lambda v: v.variable)
def test_dashboard_variable_has_values(stack: Stack, variable: LabelValues) -> None:
    values = stack.prometheus.api(f"label/{variable.label}/values", **{"match[]": variable.metric})
    assert values, f"label_values({variable.metric}, {variable.label}) is empty"
    if variable.label == "model":
        assert UNPRICED_MODEL in values


def test_rules_are_loaded_and_healthy(stack: Stack) -> None:
    groups = stack.prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(rule_expressions())
    for rule in rules:
        assert rule["health"] == "ok", rule


def test_values_are_plausible(stack: Stack) -> None:
    """A few semantic checks on top of "has data": ratios are fractions, p95 sits inside the buckets."""
    prometheus = stack.prometheus
    for series in prometheus.query("model:tokentrace_spans_error_ratio:rate5m"):
        assert 0 <= float(series["value"][1]) <= 1
    p95 = [float(s["value"][1]) for s in prometheus.query("model:tokentrace_latency_ms_p95:rate5m")]
    assert p95 and all(0 < v <= 60_000 for v in p95 if not math.isnan(v))
    for series in prometheus.query("tokentrace_quality_score"):
        assert 0 <= float(series["value"][1]) <= 1
    unpriced = prometheus.query(f'tokentrace_unpriced_spans_total{{model="{UNPRICED_MODEL}"}}')
    assert [float(s["value"][1]) for s in unpriced] == [1.0]
    firings = prometheus.query('tokentrace_alert_firings_total{alert="e2e-always"}')
    assert firings and float(firings[0]["value"][1]) >= 1 and firings[0]["metric"]["level"] == "warning"


def test_prometheus_config_passes_promtool(stack: Stack) -> None:
    assert "SUCCESS" in stack.config_check
    assert promtool("check", "config", str(stack.prometheus.config_path)).returncode == 0


def test_exposition_passes_promtool_check_metrics(stack: Stack) -> None:
    """The scrape parses; the only lint finding is the unit in ``tokentrace_latency_ms``, a fixed name (README, "Prometheus")."""
    with urllib.request.urlopen(f"{stack.server.url}{PROMETHEUS_PATH}", timeout=5) as response:
        exposition = response.read()
    checked = promtool("check", "metrics", stdin=exposition)
    findings = {line.strip() for line in (checked.stdout + checked.stderr).splitlines() if line.strip()}
    assert checked.returncode in (0, 3), findings  # 1: parse error, 3: lint findings only
    assert findings <= {"tokentrace_latency_ms metric names should not contain abbreviated units"}, findings


def test_prometheus_scraped_the_server(stack: Stack) -> None:
    targets = stack.prometheus.api("targets")["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
