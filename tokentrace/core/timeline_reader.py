"""The server's :class:`~tokentrace.core.alerts.MetricReader` (the protocol in ``core/alerts/reader.py``):
alert rules read their metrics from a Timeline, through the same metric table as the HTTP API.

One evaluation round asks for many (window, filter) pairs over the same few windows. The reader queries
each window once, grouped by series, and answers filters on model/provider/caller by merging the matching
series in memory; results are cached until the timeline changes (its ``generation``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tokentrace.core.aggregate import Aggregate
from tokentrace.core.alerts.metrics import COUNT_METRICS
from tokentrace.core.alerts.reader import MetricReading
from tokentrace.core.buckets import BUILTIN_DIMENSIONS, SEP, SERIES, Projection
from tokentrace.core.metrics import scalar_value
from tokentrace.core.timeline import Timeline, total

__all__ = ["TimelineReader"]

_INDEX = {name: i for i, name in enumerate(BUILTIN_DIMENSIONS)}


class TimelineReader:
    """A ``MetricReader`` over a Timeline: the window is whole buckets, as in ``GET /metrics``.

    ``timeline`` may be a function returning the timeline to read (a store that replaces its copy).
    """

    def __init__(self, timeline: Timeline | Callable[[], Timeline]) -> None:
        self._source = timeline if callable(timeline) else (lambda: timeline)
        self._seen: Timeline | None = None
        self._generation = -1
        self._series: dict[tuple[int, int], Projection] = {}
        self._totals: dict[tuple[int, int, tuple[tuple[str, str], ...]], Aggregate] = {}

    @property
    def timeline(self) -> Timeline:
        return self._source()

    def read(self, metric: str, window_s: float, filter: Mapping[str, str], now_ms: int) -> MetricReading:
        aggregate = self._aggregate(round(window_s * 1000), filter, now_ms)
        if not aggregate.count and metric not in COUNT_METRICS:
            return MetricReading(None, 0)
        value = scalar_value(metric, aggregate)
        return MetricReading(None if value is None else float(value), aggregate.count)

    def _aggregate(self, window_ms: int, where: Mapping[str, str], now_ms: int) -> Aggregate:
        timeline = self.timeline
        if timeline.generation != self._generation or timeline is not self._seen:
            self._seen = timeline
            self._generation = timeline.generation
            self._series.clear()
            self._totals.clear()
        start, end = timeline.window_start(now_ms, window_ms), timeline.window_end(now_ms)
        key = (start, end, tuple(sorted(where.items())))
        cached = self._totals.get(key)
        if cached is not None:
            return cached
        if any(name not in _INDEX for name in where):  # attribute filters need the attribute groups
            result = total(timeline.query(start, end, None, where))
        else:
            series = self._series.get((start, end))
            if series is None:
                series = self._series[(start, end)] = timeline.query(start, end, SERIES)
            wanted = [(_INDEX[name], value) for name, value in where.items()]
            result = Aggregate()
            for series_key, aggregate in series.items():
                parts = series_key.split(SEP)
                if all(parts[i] == value for i, value in wanted):
                    result.merge(aggregate)
        self._totals[key] = result
        return result
