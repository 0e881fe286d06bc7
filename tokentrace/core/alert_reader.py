"""Alert rules read their metrics from a Timeline, through the same metric table as the HTTP API."""

from __future__ import annotations

from collections.abc import Mapping

from tokentrace.core.alerts.metrics import COUNT_METRICS
from tokentrace.core.alerts.reader import MetricReading
from tokentrace.core.metrics import scalar_value
from tokentrace.core.timeline import Timeline, total

__all__ = ["TimelineReader"]


class TimelineReader:
    """A ``MetricReader`` over a Timeline: the window is whole buckets, as in ``GET /metrics``."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline

    def read(self, metric: str, window_s: float, filter: Mapping[str, str], now_ms: int) -> MetricReading:
        timeline = self.timeline
        start = timeline.window_start(now_ms, round(window_s * 1000))
        aggregate = total(timeline.query(start, timeline.window_end(now_ms), None, filter))
        if not aggregate.count and metric not in COUNT_METRICS:
            return MetricReading(None, 0)
        value = scalar_value(metric, aggregate)
        return MetricReading(None if value is None else float(value), aggregate.count)
