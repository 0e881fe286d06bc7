"""Reading a request body with its ``Content-Encoding``, never inflating past the size limit.

The application turns aiohttp's own decompression off (``create_app``: ``auto_decompress=False``): aiohttp
went on reading and inflating the rest of a body after the route had answered 413 at the limit (a 1 MB
gzip bomb became 1 GiB of zeros inflated after the answer, 377 MB peak). Here the compressed bytes are read
(at most ``max_body_bytes`` of them), then inflated in a worker thread (zlib releases the GIL, so the event
loop keeps serving) by at most ``limit + 1`` bytes: one byte over the limit is proof enough for a 413.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from tokentrace.api.context import CONTEXT
from tokentrace.api.responses import APIError
from tokentrace.core.timefmt import format_duration, parse_duration

__all__ = ["CODINGS", "BodyTooLarge", "UndecodableBody", "UnsupportedCoding", "inflate", "read_body"]

#: Content codings a request body may have.
CODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
_PLAIN = frozenset({"", "identity"})
#: zlib window bits: gzip or zlib header, detected automatically.
_AUTO_HEADER = 32 + zlib.MAX_WBITS
_STEP = 1 << 20
_INLINE = 4096


class BodyTooLarge(APIError):
    """413: the body, raw or inflated, is over the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit} bytes (http_server.max_body_bytes)")


class UnsupportedCoding(APIError):
    """415: a ``Content-Encoding`` this server does not read."""

    def __init__(self, coding: str) -> None:
        super().__init__(415, f"unsupported Content-Encoding {coding!r}: send gzip, deflate or no encoding")


class UndecodableBody(APIError):
    """400: the body does not decode as its ``Content-Encoding`` says."""

    def __init__(self, coding: str, detail: str) -> None:
        super().__init__(400, f"body does not decode as Content-Encoding {coding!r}: {detail}")


def inflate(data: bytes, coding: str, limit: int) -> bytes:
    """``data`` decoded from ``coding`` (gzip, possibly several members, or deflate, with or without its
    zlib header); raises BodyTooLarge as soon as the output passes ``limit`` bytes, UndecodableBody if corrupt.
    """
    out = bytearray()
    wbits = _AUTO_HEADER
    if coding == "deflate" and data[:1] and data[0] & 0x0F != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate, as some clients send for "deflate"
    pending = data
    try:
        while pending:
            decompressor = zlib.decompressobj(wbits)
            chunk = pending
            while True:
                piece = decompressor.decompress(chunk, min(_STEP, limit + 1 - len(out)))
                out += piece
                if len(out) > limit:
                    raise BodyTooLarge(limit)
                chunk = decompressor.unconsumed_tail
                if not chunk and (not piece or decompressor.eof):
                    break  # all input consumed and no output left behind
            if not decompressor.eof:
                raise UndecodableBody(coding, "the compressed stream is truncated")
            pending = decompressor.unused_data if wbits == _AUTO_HEADER else b""  # the next gzip member
    except zlib.error as exc:
        raise UndecodableBody(coding, str(exc)) from None
    return bytes(out)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body decoded from its ``Content-Encoding``; 413 beyond ``limit`` bytes (raw or inflated),
    415 for an unknown coding, 400 for a corrupt one, 408 when it has not arrived within
    ``http_server.read_body_timeout``. Nothing past the limit is read or inflated."""
    timeout = parse_duration(request.app[CONTEXT].config.http_server.read_body_timeout)
    try:
        async with asyncio.timeout(timeout):
            raw = await _read_raw(request, limit)
    except TimeoutError:
        request.app[CONTEXT].rejected["timeout"] += 1
        raise APIError(
            408, f"request body not received within {format_duration(timeout)} (read_body_timeout)"
        ) from None
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in _PLAIN:
        return raw
    if len(raw) <= _INLINE:  # small (so at most ~4 MB inflated): cheaper inline than a thread hop
        return inflate(raw, coding, limit)
    return await asyncio.to_thread(inflate, raw, coding, limit)


async def _read_raw(request: web.Request, limit: int) -> bytes:
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in CODINGS:
        raise UnsupportedCoding(coding)
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
