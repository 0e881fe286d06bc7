"""``query_each``: one query per interval, the same answers as querying each in turn, in slices the loop can
serve others between (``GET /metrics/series`` over 30 days by the hour held the loop ~350 ms; slices of
``SLICE_S``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tokentrace.api.stores.sliced import query_each
from tokentrace.core.buckets import Projection
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms
from tokentrace.core.timeline import Timeline, TimelineSettings

HOUR = 3_600_000
NOW = 1_780_000_000_000 - 1_780_000_000_000 % HOUR


def timeline() -> Timeline:
    out = Timeline(TimelineSettings())
    spans = [
        Span(trace_id=f"t{i}", model=f"m{i % 3}", prompt_tokens=i, started_at=format_ms(NOW - i * 600_000 - 1))
        for i in range(60)
    ]
    out.add_many(spans, [NOW - i * 600_000 - 1 for i in range(60)])
    return out


async def test_the_answers_are_each_intervals_query() -> None:
    line = timeline()
    intervals = [(NOW - (h + 1) * HOUR, NOW - h * HOUR) for h in range(10)]
    expected = [line.query(start, end, "model", {}) for start, end in intervals]
    assert await query_each(line, intervals, "model", {}) == expected
    assert sum(a.count for p in expected for a in p.values()) == 60


class SlowTimeline:
    """A timeline whose every query takes 5 ms of the loop's time."""

    def query(self, start: int, end: int, groupby: str | None, where: dict[str, str]) -> Projection:
        time.sleep(0.005)
        return {}


async def test_the_loop_serves_others_between_slices() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    slow: Any = SlowTimeline()
    await query_each(slow, [(0, 1)] * 40, None, {})  # 200 ms of queries: ten slices of 20 ms
    task.cancel()
    assert ticks >= 5, "the ticker ran between slices, not only at the end"
