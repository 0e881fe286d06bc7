"""``GET /traces`` (search), ``GET /traces/recent`` (the MIST-era answer) and ``GET /traces/{id}``."""

from __future__ import annotations

from aiohttp import web

from tokentrace.api.context import CONTEXT
from tokentrace.api.responses import APIError, json_response
from tokentrace.core.mist import from_span
from tokentrace.core.span import STATUSES
from tokentrace.core.timefmt import parse_rfc3339_ms
from tokentrace.core.traces import TraceFilter, attribute_filters

__all__ = ["routes"]

routes = web.RouteTableDef()
MAX_LIMIT = 200
MAX_RECENT = 1000
#: The seed's default for ``/traces/recent``.
RECENT_DEFAULT = 100


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"{name}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise APIError(400, f"{name}: must be between {low} and {high}, got {value}")
    return value


def _time(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_rfc3339_ms(raw)
    except ValueError as exc:
        raise APIError(400, f"{name}: {exc}") from None


@routes.get("/traces")
async def search_traces(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise APIError(400, f"status: must be one of {', '.join(STATUSES)}, got {status!r}")
    limit = _int(request, "limit", 20, 1, MAX_LIMIT)
    offset = _int(request, "offset", 0, 0, 10**9)
    where = TraceFilter(
        attributes=attribute_filters(request.query),
        model=request.query.get("model"),
        caller=request.query.get("caller"),
        status=status,
        since_ms=_time(request, "since"),
        until_ms=_time(request, "until"),
    )
    total, page = await request.app[CONTEXT].store.search_traces(where, limit, offset)
    return json_response({"traces": page, "total": total, "limit": limit, "offset": offset})


@routes.get("/traces/recent")
async def recent_spans(request: web.Request) -> web.Response:
    """The MIST-era answer (README, "Seed 001 (MIST) compatibility"): ``{"spans": [MIST trace spans], "count": n}``, so seed tools read it unchanged."""
    limit = _int(request, "limit", RECENT_DEFAULT, 1, MAX_RECENT)
    spans = [from_span(span) for span in await request.app[CONTEXT].store.recent_spans(limit)]
    return json_response({"spans": spans, "count": len(spans)})


@routes.get("/traces/{trace_id}")
async def get_trace(request: web.Request) -> web.Response:
    trace_id = request.match_info["trace_id"]
    body = await request.app[CONTEXT].store.trace(trace_id)
    if body is None:
        raise APIError(404, f"trace {trace_id!r} not found (not recorded, or outside the retention window)")
    return json_response(body)
