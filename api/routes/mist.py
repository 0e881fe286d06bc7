"""``POST /mist``: one seed-001 MIST ``trace.span`` message, accepted through the shared ingest tail."""

from __future__ import annotations

from aiohttp import web

from tokentrace.api.body import BodyTooLarge, read_body
from tokentrace.api.context import CONTEXT
from tokentrace.api.responses import APIError, json_response
from tokentrace.api.routes.spans import accept_spans
from tokentrace.core.mist import MAX_MESSAGE_BYTES, MistError, decode_message, to_span

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/mist")
async def post_mist(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    limit = min(MAX_MESSAGE_BYTES, ctx.config.http_server.max_body_bytes)
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        ctx.rejected["too_large"] += 1
        raise APIError(413, f"MIST message larger than {limit} bytes") from None
    try:
        envelope, payload = decode_message(body)
        span = to_span(envelope.source, payload)
    except MistError as exc:
        ctx.rejected["invalid"] += 1
        raise APIError(400, str(exc)) from None
    accepted = await accept_spans(request, [span])
    return json_response({"accepted": accepted}, status=202)
