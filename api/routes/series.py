"""``GET /metrics/series``: the window of ``GET /metrics`` cut into intervals of ``step``, for charts.

Every interval of the window is answered, empty ones included, so a chart shows a gap or a zero where
nothing happened rather than a line drawn across it. The counts and costs of the intervals add up to
``/metrics`` over the same window (tokentrace/core/series.py says how the window is cut).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokentrace.api.context import CONTEXT
from tokentrace.api.responses import APIError, json_response
from tokentrace.api.routes.metrics import Window
from tokentrace.core.aggregate import Aggregate
from tokentrace.core.metrics import parse_window_ms, point_body
from tokentrace.core.series import intervals, validate_step

__all__ = ["FILTERS", "routes"]

routes = web.RouteTableDef()
#: Query parameters that keep only the spans of one value of a built-in dimension.
FILTERS = ("model", "provider", "caller")
_EMPTY = Aggregate()


@routes.get("/metrics/series")
async def series(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    window = Window(request)
    step_label = request.query.get("step", "")
    if not step_label:
        raise APIError(400, "step: required (a Go duration such as 1m or 5m)")
    try:
        step_ms = parse_window_ms(step_label)
        validate_step(step_ms, ctx.store.settings.bucket_ms)
        cuts = intervals(window.start, window.end, step_ms)
    except ValueError as exc:
        raise APIError(400, f"step: {exc}") from None
    where = {name: request.query[name] for name in FILTERS if name in request.query}
    projections = await ctx.store.series(cuts, window.groupby, where)
    body: dict[str, Any] = {"window": window.label, "step": step_label}
    if where:
        body["filter"] = where
    if window.groupby is None:
        body["points"] = [point_body(start, p.get("", _EMPTY)) for (start, _), p in zip(cuts, projections, strict=True)]
        return json_response(body)
    groups = sorted({group for projection in projections for group in projection})
    body["groupby"] = window.groupby
    body["series"] = {
        group: [point_body(start, p.get(group, _EMPTY)) for (start, _), p in zip(cuts, projections, strict=True)]
        for group in groups
    }
    return json_response(body)
