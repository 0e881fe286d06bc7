"""``GET /metrics`` and ``GET /metrics/{name}``: window aggregates, optionally grouped.

A window of ``W`` covers whole buckets: the bucket holding "now" and the ``ceil(W / bucket) - 1``
buckets before it, by the spans' own ``started_at``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tokentrace.api.context import CONTEXT, ServerContext
from tokentrace.api.cycles import cycles_wait
from tokentrace.api.responses import APIError
from tokentrace.core.buckets import Projection
from tokentrace.core.codec import encode_json
from tokentrace.core.metrics import (
    GROUP_METRICS,
    SCALAR_METRICS,
    cost_by_model,
    full_body,
    group_body,
    metric_names,
    parse_window_ms,
    scalar_value,
)
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import LifetimeParts, total

__all__ = ["Window", "routes"]

routes = web.RouteTableDef()
_MAX_GROUPBY_LENGTH = 256


class Window:
    """The `window` and `groupby` parameters: whole buckets ending with the one that holds now."""

    def __init__(self, request: web.Request) -> None:
        ctx = request.app[CONTEXT]
        self.label = request.query.get("window", "1h")
        try:
            window_ms = parse_window_ms(self.label)
        except ValueError as exc:
            raise APIError(400, f"window: {exc}") from None
        settings = ctx.store.settings
        if window_ms > settings.retention_ms:
            raise APIError(400, f"window: {self.label} is longer than the retention of aggregates")
        now = now_ms()
        bucket = settings.bucket_ms
        buckets = max(1, -(-window_ms // bucket))
        self.end = now - now % bucket + bucket
        self.start = self.end - buckets * bucket
        groupby = request.query.get("groupby", "").strip()
        if len(groupby) > _MAX_GROUPBY_LENGTH or groupby.startswith("__"):
            raise APIError(400, "groupby: not a dimension or attribute key")
        self.groupby = groupby or None

    async def parts(self, ctx: ServerContext, groupby: str | None) -> LifetimeParts:
        """The window grouped by ``groupby`` as parts the store no longer changes, to sum in a thread."""
        return await ctx.store.query_parts(self.start, self.end, groupby, {})


async def _off_loop(parts: list[LifetimeParts], body: Callable[[list[Projection]], dict[str, Any]]) -> web.Response:
    """Sum ``parts``, build the answer from them and encode it in a thread (a day of capped attribute values can
    be 100k groups: seconds of merging and percentiles, and 13 MB of JSON for 40k of them, 70-90 ms to encode),
    then memoise what was summed, back on the loop."""

    def work() -> bytes:
        with cycles_wait():  # full collections would walk every group this builds, again and again
            return encode_json(body([p.total() for p in parts]))

    answer = await asyncio.to_thread(work)
    for p in parts:
        p.install()  # ~20 ms for a day of 40k groups: one part per turn of the loop
        await asyncio.sleep(0)
    return web.Response(body=answer, content_type="application/json")


@routes.get("/metrics")
async def all_metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    window = Window(request)
    groupby = window.groupby
    parts = [await window.parts(ctx, "model")]
    if groupby is not None and groupby != "model":
        parts.append(await window.parts(ctx, groupby))

    def body(projections: list[Projection]) -> dict[str, Any]:
        by_model = projections[0]
        if groupby is None:
            return {"window": window.label, **full_body(total(by_model), cost_by_model(by_model))}
        groups = projections[-1]
        out = {}
        for value, aggregate in sorted(groups.items()):
            group_costs = cost_by_model({value: aggregate}) if groupby == "model" else {}
            out[value] = full_body(aggregate, group_costs)
            if groupby != "model":
                del out[value]["cost"]["by_model"]
        return {"window": window.label, "groupby": groupby, f"by_{groupby}": out}

    return await _off_loop(parts, body)


@routes.get("/metrics/{name}")
async def one_metric(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    if name not in GROUP_METRICS and name not in SCALAR_METRICS:
        raise APIError(404, f"unknown metric {name!r}; known metrics: {', '.join(metric_names())}")
    window = Window(request)
    groupby = window.groupby
    parts = [await window.parts(ctx, groupby if groupby is not None else "model")]

    def body(projections: list[Projection]) -> dict[str, Any]:
        out: dict[str, Any] = {"window": window.label}
        if groupby is not None:
            groups = projections[0]
            out["groupby"] = groupby
            if name in GROUP_METRICS:
                out[f"by_{groupby}"] = {v: group_body(name, a) for v, a in sorted(groups.items())}
            else:
                out["name"] = name
                out[f"by_{groupby}"] = {v: scalar_value(name, a) for v, a in sorted(groups.items())}
            return out
        by_model = projections[0]
        overall = total(by_model)
        if name in GROUP_METRICS:
            out.update(group_body(name, overall))
            if name == "cost":
                out["by_model"] = cost_by_model(by_model)
        else:
            out.update({"name": name, "value": scalar_value(name, overall)})
        return out

    return await _off_loop(parts, body)
