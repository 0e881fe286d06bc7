"""Many timeline queries in one request, in slices between which the event loop serves others.

``GET /metrics/series`` asks one ``Timeline.query`` per interval: 720 of them for 30 days by the hour, some 350 ms
of work on the 10M-span state of bench/metrics_query.py, which held the event loop whole. The timeline belongs to
the loop (it changes as spans arrive), so the queries stay on it, but they run ``SLICE_S`` at a time: a ``/health``
or an ingest waits one slice, not the whole series. Each interval is read as the timeline is when its turn comes, as
a series read while spans arrive would be anyway.
"""

from __future__ import annotations

import asyncio
import time

from tokentrace.core.buckets import Projection
from tokentrace.core.timeline import Timeline

__all__ = ["SLICE_S", "query_each"]

#: The longest the loop runs queries for one request before it lets others in.
SLICE_S = 0.02


async def query_each(
    timeline: Timeline, intervals: list[tuple[int, int]], groupby: str | None, where: dict[str, str]
) -> list[Projection]:
    """``timeline.query(start, end, groupby, where)`` for each interval, in order, yielding every ``SLICE_S``."""
    out: list[Projection] = []
    began = time.perf_counter()
    for start, end in intervals:
        out.append(timeline.query(start, end, groupby, where))
        if time.perf_counter() - began >= SLICE_S:
            await asyncio.sleep(0)
            began = time.perf_counter()
    return out
