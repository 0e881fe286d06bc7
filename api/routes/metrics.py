"""``GET /metrics`` and ``GET /metrics/{name}``: window aggregates, optionally grouped.

A window of ``W`` covers whole buckets: the bucket holding "now" and the ``ceil(W / bucket) - 1``
buckets before it, by the spans' own ``started_at``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokentrace.api.context import CONTEXT, ServerContext
from tokentrace.api.responses import APIError, json_response
from tokentrace.core.buckets import Projection
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
from tokentrace.core.timeline import total

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

    async def project(self, ctx: ServerContext, groupby: str | None) -> Projection:
        return await ctx.store.query(self.start, self.end, groupby, {})


@routes.get("/metrics")
async def all_metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    window = Window(request)
    by_model = await window.project(ctx, "model")
    if window.groupby is None:
        return json_response({"window": window.label, **full_body(total(by_model), cost_by_model(by_model))})
    groups = by_model if window.groupby == "model" else await window.project(ctx, window.groupby)
    body = {}
    for value, aggregate in sorted(groups.items()):
        group_costs = cost_by_model({value: aggregate}) if window.groupby == "model" else {}
        body[value] = full_body(aggregate, group_costs)
        if window.groupby != "model":
            del body[value]["cost"]["by_model"]
    return json_response({"window": window.label, "groupby": window.groupby, f"by_{window.groupby}": body})


@routes.get("/metrics/{name}")
async def one_metric(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    if name not in GROUP_METRICS and name not in SCALAR_METRICS:
        raise APIError(404, f"unknown metric {name!r}; known metrics: {', '.join(metric_names())}")
    window = Window(request)
    body: dict[str, Any] = {"window": window.label}
    if window.groupby is not None:
        groups = await window.project(ctx, window.groupby)
        body["groupby"] = window.groupby
        if name in GROUP_METRICS:
            body[f"by_{window.groupby}"] = {v: group_body(name, a) for v, a in sorted(groups.items())}
        else:
            body["name"] = name
            body[f"by_{window.groupby}"] = {v: scalar_value(name, a) for v, a in sorted(groups.items())}
        return json_response(body)
    by_model = await window.project(ctx, "model")
    overall = total(by_model)
    if name in GROUP_METRICS:
        body.update(group_body(name, overall))
        if name == "cost":
            body["by_model"] = cost_by_model(by_model)
    else:
        body.update({"name": name, "value": scalar_value(name, overall)})
    return json_response(body)
