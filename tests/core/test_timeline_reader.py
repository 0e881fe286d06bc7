"""The alert reader agrees with the metric table and the window rules of GET /metrics."""

from __future__ import annotations

from tokentrace.core.alerts.metrics import READER_METRICS
from tokentrace.core.metrics import SCALAR_METRICS
from tokentrace.core.span import Span
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, Timeline
from tokentrace.core.timeline_reader import TimelineReader

NOW = 1_780_000_000_000 + 30 * MINUTE_MS + 500


def test_every_alert_metric_is_a_scalar_metric() -> None:
    assert set(READER_METRICS) <= set(SCALAR_METRICS)


def test_reads_filtered_window_values() -> None:
    timeline = Timeline()
    for model, status, cost in (("a", "ok", 0.5), ("a", "error", 0.25), ("b", "ok", 1.0)):
        timeline.add(Span(model=model, prompt_tokens=10, status=status, cost_usd=cost, latency_ms=100), NOW)
    timeline.add(Span(model="a", prompt_tokens=10, cost_usd=9.0), NOW - 2 * HOUR_MS)
    reader = TimelineReader(timeline)
    assert reader.read("total_cost", 3600, {"model": "a"}, NOW).value == 0.75
    assert reader.read("total_cost", 3 * 3600, {"model": "a"}, NOW).value == 9.75
    reading = reader.read("error_rate", 3600, {"model": "a"}, NOW)
    assert (reading.value, reading.span_count) == (0.5, 2)


def test_empty_window_sums_are_zero_and_rates_are_none() -> None:
    reader = TimelineReader(Timeline())
    assert reader.read("span_count", 60, {}, NOW).value == 0
    assert reader.read("error_rate", 60, {}, NOW).value is None
    assert reader.read("latency_p95", 60, {}, NOW).value is None


def test_cached_answers_follow_new_spans() -> None:
    timeline = Timeline()
    reader = TimelineReader(timeline)
    timeline.add(Span(model="a", prompt_tokens=1), NOW)
    assert reader.read("span_count", 3600, {"model": "a"}, NOW).value == 1
    timeline.add(Span(model="a", prompt_tokens=1), NOW)
    assert reader.read("span_count", 3600, {"model": "a"}, NOW).value == 2
    assert reader.read("span_count", 3600, {"model": "b"}, NOW).value == 0


def test_attribute_filter_reads_attribute_groups() -> None:
    timeline = Timeline()
    timeline.add(Span(model="a", prompt_tokens=1, attributes={"tier": 1}), NOW)
    timeline.add(Span(model="a", prompt_tokens=1, attributes={"tier": 2}), NOW)
    reader = TimelineReader(timeline)
    assert reader.read("span_count", 3600, {"model": "a", "tier": "1"}, NOW).value == 1
