"""Test doubles for the alert engine: a settable metric reader and a manual clock."""

from __future__ import annotations

from collections.abc import Mapping

from tokentrace.core.alerts import MetricReading


class FakeReader:
    """Returns whatever was set per metric (default: no data), recording every read."""

    def __init__(self) -> None:
        self.values: dict[str, MetricReading] = {}
        self.failing: dict[str, Exception] = {}
        self.calls: list[tuple[str, float, dict[str, str], int]] = []

    def set(self, metric: str, value: float | None, span_count: int = 100) -> None:
        self.values[metric] = MetricReading(value=value, span_count=span_count)

    def read(self, metric: str, window_s: float, filter: Mapping[str, str], now_ms: int) -> MetricReading:
        self.calls.append((metric, window_s, dict(filter), now_ms))
        if metric in self.failing:
            raise self.failing[metric]
        return self.values.get(metric, MetricReading(value=None, span_count=0))


class ManualClock:
    """Epoch milliseconds that move only when told to."""

    def __init__(self, start_ms: int = 1_773_584_581_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += round(seconds * 1000)
        return self.now
