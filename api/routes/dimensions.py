"""``GET /metrics/dimensions``: what ``groupby`` can name over a window (the console's group-by choices).

The built-in dimensions always, then the attribute keys the window's aggregates are grouped by, sorted: keys
seen only early in the window are there too, and a key past the per-bucket cap (never grouped) is not.
"""

from __future__ import annotations

from aiohttp import web

from tokentrace.api.context import CONTEXT
from tokentrace.api.responses import json_response
from tokentrace.api.routes.metrics import Window
from tokentrace.core.buckets import BUILTIN_DIMENSIONS

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/metrics/dimensions")
async def dimensions(request: web.Request) -> web.Response:
    window = Window(request)
    keys = await request.app[CONTEXT].store.attribute_keys(window.start, window.end)
    # A key ``groupby`` would read as a built-in dimension, or refuses (``__``), is not offered.
    attributes = sorted(k for k in keys if k not in BUILTIN_DIMENSIONS and not k.startswith("__"))
    return json_response({"window": window.label, "dimensions": [*BUILTIN_DIMENSIONS, *attributes]})
