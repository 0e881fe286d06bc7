"""``POST /mist``: one seed-001 MIST ``trace.span`` message, accepted through the shared ingest tail."""

from __future__ import annotations

from aiohttp import web

from tokentrace.api.context import CONTEXT
from tokentrace.api.responses import APIError, json_response
from tokentrace.api.routes.spans import accept_spans
from tokentrace.core.mist import MAX_MESSAGE_BYTES, MistError, decode_message, to_span

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _read(request: web.Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` bytes (without reading the rest)."""
    too_large = APIError(413, f"MIST message larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@routes.post("/mist")
async def post_mist(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        body = await _read(request, min(MAX_MESSAGE_BYTES, ctx.config.http_server.max_body_bytes))
    except APIError:
        ctx.rejected["too_large"] += 1
        raise
    try:
        envelope, payload = decode_message(body)
        span = to_span(envelope.source, payload)
    except MistError as exc:
        ctx.rejected["invalid"] += 1
        raise APIError(400, str(exc)) from None
    accepted = await accept_spans(request, [span])
    return json_response({"accepted": accepted}, status=202)
