"""``GET /health``: 200 while the store can take writes, 503 (with the reason) when it cannot."""

from __future__ import annotations

from aiohttp import web

from tokentrace.api.context import CONTEXT
from tokentrace.api.responses import json_response

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    state = await ctx.store.health()
    body = {
        "status": "ok" if state.healthy else "unhealthy",
        "version": ctx.version,
        "uptime_s": ctx.uptime_s,
        "span_count": state.span_count,
        "transport": state.transport,
        "queue_depth": state.queue_depth,
    }
    if not state.healthy:
        body["error"] = state.reason or "unhealthy"
    return json_response(body, status=200 if state.healthy else 503)
