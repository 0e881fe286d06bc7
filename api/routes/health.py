"""``GET /health``: ``ok``, ``degraded`` or ``unhealthy``.

- ``ok`` (200): the store takes writes and its data is whole.
- ``degraded`` (200, with ``reason``): it takes writes and serves reads, but recovery found damaged data files
  and moved them to quarantine. 200 because a load balancer or a Kubernetes probe must keep sending traffic
  (a restart does not repair a file); monitoring alerts on ``status``.
- ``unhealthy`` (503, with ``error``): the store cannot write (e.g. the disk is full; writes resume by
  themselves once it can).
"""

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
    status = "unhealthy" if not state.healthy else "degraded" if state.degraded else "ok"
    body = {
        "status": status,
        "version": ctx.version,
        "uptime_s": ctx.uptime_s,
        "span_count": state.span_count,
        "transport": state.transport,
        "queue_depth": state.queue_depth,
    }
    if not state.healthy:
        body["error"] = state.reason or "unhealthy"
    if state.degraded:
        body["reason"] = state.degraded
    return json_response(body, status=200 if state.healthy else 503)
