"""Generates ``dashboards/grafana.json``, the tokentrace Grafana dashboard, with grafana-foundation-sdk.

Run ``python dashboards/generate.py`` after changing a panel and commit both files;
``python dashboards/generate.py --check`` exits 1 (with a diff) when the committed JSON has drifted.
Every query uses the ``$datasource`` variable and the ``$model``/``$provider``/``$caller`` filters
(``caller`` only exists on ``tokentrace_cost_total``, so only cost panels filter on it).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, table, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    GraphDrawStyle,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = ["OUTPUT", "build", "render"]

OUTPUT = Path(__file__).with_name("grafana.json")
UID = "tokentrace-overview"
#: Grafana 10.4's dashboard schema; Grafana 10 and 11 import it as is.
SCHEMA_VERSION = 39
#: The alert threshold the quality panel draws, as in the QualityDrop rule (dashboards/prometheus-rules.yml).
QUALITY_THRESHOLD = 0.75

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SERIES = 'model=~"$model", provider=~"$provider"'
COST = f'{SERIES}, caller=~"$caller"'


def _query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE).range()


def _legend() -> VizLegendOptions:
    return VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.BOTTOM).show_legend(True)


def _series(title: str, description: str, unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .line_width(1)
        .fill_opacity(10)
        .legend(_legend())
        .span(12)
        .height(8)
    )


def _variable(name: str, metric: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(name)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {name})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def _cost_panels() -> list[Any]:
    per_minute = _series(
        "Cost over time",
        "USD per minute by model: rate(tokentrace_cost_total) * 60. A step up usually follows a deployment.",
        "currencyUSD",
    ).with_target(_query(f"sum by (model) (rate(tokentrace_cost_total{{{COST}}}[$__rate_interval])) * 60", "{{model}}"))
    per_call = _series(
        "Cost per successful call",
        "USD per ok span by model: cost rate over the rate of spans with status ok.",
        "currencyUSD",
    ).with_target(
        _query(
            f"sum by (model) (rate(tokentrace_cost_total{{{SERIES}}}[$__rate_interval]))"
            f' / (sum by (model) (rate(tokentrace_spans_total{{status="ok", {SERIES}}}[$__rate_interval])) > 0)',
            "{{model}}",
        )
    )
    by_caller = _series(
        "Cost by caller",
        "USD per minute by calling service (the span's caller; spans without one: none).",
        "currencyUSD",
    ).with_target(
        _query(
            f"label_replace(sum by (caller) (rate(tokentrace_cost_total{{{COST}}}[$__rate_interval])) * 60,"
            ' "caller", "none", "caller", "")',
            "{{caller}}",
        )
    )
    tokens = _series(
        "Tokens per model", "Tokens per minute by model and type (prompt or completion).", "short"
    ).with_target(
        _query(
            f"sum by (model, type) (rate(tokentrace_tokens_total{{{SERIES}}}[$__rate_interval])) * 60",
            "{{model}} {{type}}",
        )
    )
    return [per_minute, per_call, by_caller, tokens]


def _latency_panels() -> list[Any]:
    buckets = f"rate(tokentrace_latency_ms_bucket{{{SERIES}}}[$__rate_interval])"
    quantiles = _series(
        "Latency p50 / p95 / p99 per model", "histogram_quantile over tokentrace_latency_ms, by model.", "ms"
    )
    for ref, q in (("A", "0.5"), ("B", "0.95"), ("C", "0.99")):
        label = f"p{round(float(q) * 100)}"
        expr = f"histogram_quantile({q}, sum by (model, le) ({buckets}))"
        quantiles = quantiles.with_target(_query(expr, f"{{{{model}}}} {label}", ref))
    hist = (
        heatmap.Panel()
        .title("Latency heatmap")
        .description(
            "Calls per latency bucket (rows) and time (columns), from tokentrace_latency_ms_bucket. Dense upper rows"
            " show where the tail sits."
        )
        .datasource(DATASOURCE)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("ms"))
        .cell_values(heatmap.CellValues().unit("short"))
        .with_target(
            _query(f"sum by (le) (increase(tokentrace_latency_ms_bucket{{{SERIES}}}[$__interval]))", "{{le}}").format(
                PromQueryFormat.HEATMAP
            )
        )
        .interval("1m")
        .span(12)
        .height(8)
    )
    prompt = _series(
        "Prompt tokens p95 per model",
        "Rising prompt-token p95 often signals context accumulation in agent loops.",
        "short",
    ).with_target(
        _query(
            "histogram_quantile(0.95, sum by (model, le) "
            f"(rate(tokentrace_prompt_tokens_bucket{{{SERIES}}}[$__rate_interval])))",
            "{{model}}",
        )
    )
    return [hist, quantiles, prompt]


def _traffic_panels() -> list[Any]:
    usage = (
        _series("Model usage", "Spans per interval by model, stacked: routing and migrations at a glance.", "short")
        .draw_style(GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(StackingConfig().mode(StackingMode.NORMAL))
        .interval("1m")
        .with_target(_query(f"sum by (model) (increase(tokentrace_spans_total{{{SERIES}}}[$__interval]))", "{{model}}"))
    )
    errors = (
        _series("Error ratio", "Share of spans with status error or timeout, by model.", "percentunit")
        .min(0)
        .with_target(
            _query(
                f'sum by (model) (rate(tokentrace_spans_total{{status!="ok", {SERIES}}}[$__rate_interval]))'
                f" / (sum by (model) (rate(tokentrace_spans_total{{{SERIES}}}[$__rate_interval])) > 0)",
                "{{model}}",
            )
        )
    )
    quality = (
        _series(
            "Quality score",
            "Average eval.score of the last 5 minutes by model (only spans that carry eval.score). The red line is"
            " the QualityDrop alert threshold.",
            "none",
        )
        .min(0)
        .max(1)
        .thresholds(
            dash.ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=None, color="red"), Threshold(value=QUALITY_THRESHOLD, color="green")])
        )
        .thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))
        .with_target(_query('avg by (model) (tokentrace_quality_score{model=~"$model"})', "{{model}}"))
    )
    return [usage, errors, quality]


def _alert_panels() -> list[Any]:
    history = (
        table.Panel()
        .title("Alert history")
        .description(
            "One row per interval in which an alert rule started firing (tokentrace_alert_firings_total increased):"
            " time, rule, level and the number of firings."
        )
        .datasource(DATASOURCE)
        .interval("1m")
        .with_target(
            _query(
                "sum by (alert, level) (increase(tokentrace_alert_firings_total[$__interval])) > 0", "{{alert}}"
            ).format(PromQueryFormat.TABLE)
        )
        .span(12)
        .height(8)
    )
    rejections = _series(
        "Ingest rejections and unpriced spans",
        "Rejected ingest requests by reason, and spans whose model has no price (their cost counts as 0).",
        "short",
    )
    rejections = rejections.with_target(
        _query(
            "sum by (reason) (rate(tokentrace_ingest_rejections_total[$__rate_interval])) * 60", "rejected {{reason}}"
        )
    ).with_target(
        _query(
            f"sum by (model) (rate(tokentrace_unpriced_spans_total{{{SERIES}}}[$__rate_interval])) * 60",
            "unpriced {{model}}",
            "B",
        )
    )
    return [history, rejections]


def build() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    builder = (
        dash.Dashboard("tokentrace")
        .uid(UID)
        .description("Token-level observability for LLM calls: cost, latency, usage, quality and alerts.")
        .tags(["tokentrace", "llm"])
        .editable()
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .current(VariableOption(selected=True, text="Prometheus", value="prometheus"))
        )
        .with_variable(_variable("model", "tokentrace_spans_total"))
        .with_variable(_variable("provider", "tokentrace_spans_total"))
        .with_variable(_variable("caller", "tokentrace_cost_total"))
    )
    panel_id = 0
    for title, panels in (
        ("Cost", _cost_panels()),
        ("Traffic, errors and quality", _traffic_panels()),
        ("Latency", _latency_panels()),
        ("Alerts and ingest", _alert_panels()),
    ):
        panel_id += 1
        builder = builder.with_row(dash.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            builder = builder.with_panel(panel.id(panel_id))
    model = builder.build()
    model.schema_version = SCHEMA_VERSION
    data: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return data


def render() -> str:
    """The file content of ``grafana.json``."""
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file differs from what would be written")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(args.output), "generated")
        sys.stderr.writelines(diff)
        sys.stderr.write(f"{args.output} is stale: run python dashboards/generate.py\n")
        return 1
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
