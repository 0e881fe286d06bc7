"""``POST /v1/traces``: OTLP/HTTP trace export; spans following the GenAI conventions become tokentrace spans.

Status codes follow OTLP/HTTP: 200 with an ``ExportTraceServiceResponse`` (``partial_success`` set when
spans were skipped), 400 for a body that does not decode, 413 for a body over ``max_body_bytes`` (raw or
inflated: ``api.body`` inflates gzip in a thread and stops one byte past the limit), 415 for other media
types or content codings; the converted spans then go through
``accept_spans`` like ``POST /spans`` (400 outside the time bounds, 503), bounded by ``max_body_bytes`` only.

Error bodies: a JSON request gets the API's ``{"error": ...}`` envelope; a protobuf request gets the
``google.rpc.Status`` OTLP prescribes (same message), which OTLP clients such as the Collector log; an
unsupported ``Content-Type`` (encoding unknown) gets the envelope.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter

from aiohttp import web

from tokentrace.api.body import BodyTooLarge, UndecodableBody, read_body
from tokentrace.api.context import CONTEXT, ServerContext
from tokentrace.api.cycles import cycles_wait
from tokentrace.api.responses import APIError
from tokentrace.api.routes.spans import accept_spans, batch_bounds
from tokentrace.core.ingest import Pricer, SpanRejected, prepare_batch
from tokentrace.core.otlp import SKIP_REASONS, Conversion, convert_request
from tokentrace.core.otlp_codec import (
    JSON,
    Encoding,
    OTLPDecodeError,
    decode_request,
    encode_response,
    encode_status,
    encoding_of,
)

__all__ = ["SKIPPED_COUNTER", "init_counters", "routes"]

routes = web.RouteTableDef()

#: Prometheus family (``..._total{reason}``) of OTLP spans skipped, in ``ServerContext.extra_counters``.
SKIPPED_COUNTER = "tokentrace_otlp_skipped_spans"
#: google.rpc.Code for the HTTP statuses this route answers (OTLP clients log it; they act on the HTTP status).
_GRPC_CODES = {400: 3, 413: 8, 415: 3, 503: 14}
_UNKNOWN = 2
#: Bodies up to this size are decoded on the event loop (a thread hop costs more than they do).
_INLINE_BYTES = 16 * 1024


def init_counters(ctx: ServerContext) -> None:
    """Export every skip reason at 0 from the start, so the first skip shows as an increase."""
    samples = ctx.extra_counters.setdefault(SKIPPED_COUNTER, {})
    for reason in SKIP_REASONS:
        samples.setdefault((("reason", reason),), 0.0)


@routes.post("/v1/traces")
async def post_traces(request: web.Request) -> web.Response:
    content_type = request.headers.get("Content-Type", "")
    encoding = encoding_of(content_type)
    if encoding is None:
        raise APIError(
            415, f"unsupported Content-Type {content_type!r}: send application/x-protobuf or application/json"
        )
    try:
        return await _export(request, encoding, content_type.split(";", 1)[0].strip().lower())
    except APIError as exc:
        if encoding == JSON:
            raise
        body = encode_status(_GRPC_CODES.get(exc.status, _UNKNOWN), exc.message)
        return web.Response(body=body, status=exc.status, content_type="application/x-protobuf", headers=exc.headers)


async def _export(request: web.Request, encoding: Encoding, media_type: str) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        body = await read_body(request, ctx.config.http_server.max_body_bytes)
    except BodyTooLarge:
        ctx.rejected["too_large"] += 1
        raise
    except UndecodableBody:
        ctx.rejected["invalid"] += 1
        raise
    limit = ctx.config.http_server.max_otlp_spans
    work = functools.partial(_decode_and_prepare, body, encoding, limit, ctx.pricer, batch_bounds(ctx))
    try:
        # Off the event loop unless small: 100k spans of JSON took 9 s to decode and convert, and pricing
        # 10k spans 0.2 s (the price table is thread-safe; the spans are this request's own).
        conversion = work() if len(body) <= _INLINE_BYTES else await asyncio.to_thread(work)
    except OTLPDecodeError as exc:
        ctx.rejected["invalid"] += 1
        raise APIError(400, str(exc)) from None
    except _TooManySpans as exc:
        ctx.rejected["too_large"] += 1
        raise APIError(413, f"request of {exc.count} spans exceeds http_server.max_otlp_spans {limit}") from None
    except SpanRejected as exc:
        ctx.rejected[exc.reason] += 1
        raise APIError(400, str(exc)) from None
    if conversion.spans:
        # Not bounded by max_batch_size: OTLP exporters and Collectors drop a batch answered 413.
        await accept_spans(request, conversion.spans, bounded=False, prepared=True)
    _count_skipped(ctx, conversion.skipped)
    answer = encode_response(conversion.rejected, conversion.message(), encoding)
    return web.Response(body=answer, content_type=media_type)


class _TooManySpans(Exception):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def _decode_and_prepare(
    body: bytes, encoding: Encoding, limit: int, pricer: Pricer | None, bounds: tuple[int, int, int]
) -> Conversion:
    """Decode the request, convert its spans and ``prepare_batch`` them (stamp, bounds, price); raises
    _TooManySpans above ``limit`` spans, OTLPDecodeError, SpanRejected. A big body: with cycle collection paused."""
    if len(body) <= _INLINE_BYTES:
        return _decode_and_prepare_now(body, encoding, limit, pricer, bounds)
    with cycles_wait():
        return _decode_and_prepare_now(body, encoding, limit, pricer, bounds)


def _decode_and_prepare_now(
    body: bytes, encoding: Encoding, limit: int, pricer: Pricer | None, bounds: tuple[int, int, int]
) -> Conversion:
    export = decode_request(body, encoding)
    count = sum(len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans)
    if count > limit:
        raise _TooManySpans(count)
    conversion = convert_request(export)
    arrival, oldest, skew_ms = bounds
    prepare_batch(conversion.spans, arrival, pricer, oldest, skew_ms)
    return conversion


def _count_skipped(ctx: ServerContext, skipped: Counter[str]) -> None:
    samples = ctx.extra_counters.setdefault(SKIPPED_COUNTER, {})
    for reason, count in skipped.items():
        key = (("reason", reason),)
        samples[key] = samples.get(key, 0.0) + count
