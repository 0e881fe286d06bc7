"""What the engine reads metrics through: the :class:`MetricReader` protocol. The server's implementation,
over its Timeline, is :class:`tokentrace.core.timeline_reader.TimelineReader`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import msgspec

__all__ = ["MetricReader", "MetricReading"]


class MetricReading(msgspec.Struct, frozen=True):
    """A metric over a window: ``value`` None means no data; ``span_count`` spans matched."""

    value: float | None
    span_count: int


class MetricReader(Protocol):
    """Reads one metric over the ``window_s`` seconds ending at ``now_ms``, for the spans ``filter`` selects.

    ``metric`` is one of :data:`tokentrace.core.alerts.metrics.READER_METRICS`. ``filter`` keys ``model``,
    ``provider`` and ``caller`` match those span fields; any other key (at most one) is an attribute key
    whose value compares as text (``{"tier": "1"}`` matches the attribute 1). Sums and counts are 0 over an empty
    window; averages, rates and percentiles are None. A reader may raise; the engine records the error
    on the rule and leaves its state as it was.
    """

    def read(self, metric: str, window_s: float, filter: Mapping[str, str], now_ms: int) -> MetricReading: ...
