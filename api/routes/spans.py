"""``POST /spans``: validate a span or a batch, make it durable, answer 202."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from tokentrace.api.body import BodyTooLarge, read_body
from tokentrace.api.context import CONTEXT, ServerContext
from tokentrace.api.responses import APIError, json_response
from tokentrace.api.stores.base import StoreUnavailable
from tokentrace.core.buckets import SERIES
from tokentrace.core.codec import decode_json_spans
from tokentrace.core.ingest import SpanRejected, compile_body, prepare_batch
from tokentrace.core.span import Span
from tokentrace.core.timefmt import now_ms, parse_duration

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = ["accept_spans", "batch_bounds", "compiled_body", "routes", "seed_labels"]

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
#: A larger body is compiled in a thread (a 1000-span batch of ~500 KB takes ~0.5 ms on the loop).
_COMPILE_INLINE_BYTES = 1 << 20


def batch_bounds(ctx: ServerContext) -> tuple[int, int, int]:
    """(arrival, oldest allowed, future skew) in ms, for ``prepare_batch`` of a batch arriving now."""
    arrival = now_ms()
    skew_ms = round(parse_duration(ctx.config.aggregation.max_future_skew) * 1000)
    return arrival, ctx.store.oldest_allowed_ms(arrival), skew_ms


async def accept_spans(request: web.Request, spans: list[Span], *, bounded: bool = True, prepared: bool = False) -> int:
    """Check the batch size, stamp, price and store ``spans``; the shared tail of every ingest path.

    ``bounded=False`` skips the ``max_batch_size`` check, for protocols whose clients drop rather than split a
    batch answered 413 (OTLP, capped by ``max_otlp_spans``). ``prepared=True``: the caller ran
    ``prepare_batch`` already (OTLP does, in a thread, with ``batch_bounds``).
    """
    ctx = request.app[CONTEXT]
    limit = ctx.config.http_server.max_batch_size
    if bounded and len(spans) > limit:
        ctx.rejected["too_large"] += 1
        raise APIError(413, f"batch of {len(spans)} spans exceeds max_batch_size {limit}")
    if not prepared:
        arrival, oldest, skew_ms = batch_bounds(ctx)
        try:
            prepare_batch(spans, arrival, ctx.pricer, oldest, skew_ms)
        except SpanRejected as exc:
            ctx.rejected[exc.reason] += 1
            raise APIError(400, str(exc)) from None
    await seed_labels(ctx)
    ctx.labels.admit(spans)
    async with refused_when_unavailable(ctx):
        await ctx.store.ingest(spans, idempotency_key(request))
    return len(spans)


@contextlib.asynccontextmanager
async def refused_when_unavailable(ctx: ServerContext) -> AsyncIterator[None]:
    """A store that cannot take spans now answers 503 (counted), not 500."""
    try:
        yield
    except StoreUnavailable as exc:
        ctx.rejected["unavailable"] += 1
        raise APIError(503, f"spans not accepted: {exc}") from None


async def seed_labels(ctx: ServerContext) -> None:
    """Admit the stored series to the label caps, once, before any span is admitted."""
    if not ctx.labels_seeded:
        # The keys of the lifetime parts, decoded in a thread (0.2-0.3 s on the loop at 10k series after a
        # restart). Requests meanwhile seed too (a union): none admits a span before the stored series are in.
        parts = await ctx.store.lifetime_parts(SERIES)
        ctx.labels.seed(await asyncio.to_thread(parts.keys))
        ctx.labels_seeded = True


async def compiled_body(ctx: ServerContext, body: bytes) -> tuple[bytes, WireBatch] | None:
    """The body's log record and compiled batch when the store takes them and the body is the usual one
    (``compile_body``: what decoding, ``accept_spans`` and the store's encoding make of it, no ``Span`` object);
    None to decode it."""
    if not ctx.store.takes_compiled:
        return None
    await seed_labels(ctx)
    arrival, oldest, skew_ms = batch_bounds(ctx)
    compile_args = (
        body,
        ctx.config.http_server.max_batch_size,
        ctx.labels.admitted_series,
        arrival,
        ctx.pricer,
        oldest,
        skew_ms,
        ctx.store.settings.bucket_ms,
    )
    if len(body) > _COMPILE_INLINE_BYTES:
        return await asyncio.to_thread(compile_body, *compile_args)
    return compile_body(*compile_args)


def idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header: one batch's id, the same on every retry of it (1-255 printable ASCII)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        request.app[CONTEXT].rejected["invalid"] += 1
        raise APIError(400, "Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


@routes.post("/spans")
async def post_spans(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        body = await read_body(request, ctx.config.http_server.max_body_bytes)
    except BodyTooLarge:
        ctx.rejected["too_large"] += 1
        raise
    if not body.strip():
        raise APIError(400, "empty request body: send a span object or an array of spans")
    compiled = await compiled_body(ctx, body)
    if compiled is not None:
        wire, batch = compiled
        async with refused_when_unavailable(ctx):
            await ctx.store.ingest_compiled(wire, batch, idempotency_key(request))
        return json_response({"accepted": len(batch)}, status=202)
    try:
        spans = decode_json_spans(body)
    except msgspec.ValidationError as exc:
        request.app[CONTEXT].rejected["invalid"] += 1
        raise APIError(400, f"invalid span: {exc}") from None
    except msgspec.DecodeError as exc:
        request.app[CONTEXT].rejected["invalid"] += 1
        raise APIError(400, f"malformed JSON: {exc}") from None
    accepted = await accept_spans(request, spans)
    return json_response({"accepted": accepted}, status=202)
