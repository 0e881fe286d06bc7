"""Connection limits in front of aiohttp: a cap on open connections and a deadline for request headers.

aiohttp has neither: 2,000 clients that opened a connection and sent nothing, or a header byte every few
seconds, were kept for as long as they liked (its idle timeout is an hour). ``ConnectionGuard`` is the
listening socket's protocol factory:

- beyond ``max_connections`` open connections, a new one is answered 503 and closed at once;
- a connection that is not running a request must deliver the next request's complete headers within
  ``header_timeout`` of being opened or of its previous answer, else it is closed (this also closes idle
  keep-alive connections after that long). ``busy_middleware`` marks a connection busy while a request
  runs; a slow body is the route's business (``api.body.read_body`` answers 408).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tokentrace.api.responses import APIError

__all__ = ["CLOSE_REASONS", "GUARD", "STREAMED_BODIES", "ConnectionGuard", "busy_middleware"]

#: Why the guard closes a connection: over ``max_connections``, or no complete headers in time.
CLOSE_REASONS = ("too_many", "header_timeout")

log = logging.getLogger(__name__)

_REFUSAL_BODY = b'{"error": "too many connections, retry shortly"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _Refuse(asyncio.Protocol):
    """A connection over the limit: the 503 and the close, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()


class ConnectionGuard:
    """The protocol factory for the listening socket; ``start`` runs the header-deadline sweep."""

    def __init__(self, max_connections: int, header_timeout: float, body_timeout: float = 60.0) -> None:
        #: Set by ``start`` (the runner's server exists once the runner is set up).
        self.server: web.Server | None = None
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        #: The deadline for a request body (``http_server.read_body_timeout``).
        self.body_timeout = body_timeout
        #: Connections closed by the guard, by reason (``too_many``, ``header_timeout``).
        self.closed: Counter[str] = Counter()
        # Plain dicts (RequestHandler has no __weakref__ slot), pruned of closed connections by ``sweep``.
        self._idle_since: dict[RequestHandler, float] = {}
        self._busy: dict[RequestHandler, int] = {}
        self._pending: list[tuple[float, RequestHandler]] = []
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self) -> asyncio.BaseProtocol:
        assert self.server is not None, "start the guard first"
        now = asyncio.get_running_loop().time()
        # Accepted in this burst but not yet registered: asyncio calls connection_made on a later turn.
        self._pending = [(at, h) for at, h in self._pending if h.transport is None and now - at < 1.0]
        if len(self.server.connections) + len(self._pending) >= self.max_connections:
            if not self.closed["too_many"]:
                log.warning(
                    "%d connections open: refusing new ones (http_server.max_connections)", self.max_connections
                )
            self.closed["too_many"] += 1
            return _Refuse()
        handler = self.server()
        self._idle_since[handler] = now
        self._pending.append((now, handler))
        return handler

    def busy(self, handler: RequestHandler) -> None:
        self._busy[handler] = self._busy.get(handler, 0) + 1

    def idle(self, handler: RequestHandler) -> None:
        left = self._busy.get(handler, 1) - 1
        if left:
            self._busy[handler] = left
        else:
            self._busy.pop(handler, None)
            self._idle_since[handler] = asyncio.get_running_loop().time()

    def sweep(self) -> None:
        """Close every connection that has waited for its request's headers longer than the deadline."""
        now = asyncio.get_running_loop().time()
        open_now = self.server.connections if self.server is not None else []
        for gone in set(self._idle_since).difference(open_now):
            del self._idle_since[gone]
        for handler in open_now:
            if handler in self._busy:
                continue
            since = self._idle_since.setdefault(handler, now)
            if now - since > self.header_timeout:
                self.closed["header_timeout"] += 1
                handler.force_close()

    def start(self, server: web.Server) -> None:
        self.server = server

        async def run() -> None:
            interval = min(1.0, self.header_timeout / 4)
            while True:
                await asyncio.sleep(interval)
                self.sweep()

        self._sweeper = asyncio.create_task(run())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


GUARD = web.AppKey("tokentrace_connection_guard", ConnectionGuard)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: Routes that read their body themselves, under the body deadline (``api.body.read_body``).
STREAMED_BODIES = frozenset({"/spans", "/mist", "/v1/traces"})


@web.middleware
async def busy_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mark the connection busy while its request runs (no deadline for headers then). A body the route
    does not read under the body deadline itself is read here first, under that deadline (408 past it)."""
    guard = request.app.get(GUARD)
    protocol = request.protocol
    if guard is None or not isinstance(protocol, RequestHandler):
        return await handler(request)
    guard.busy(protocol)
    try:
        if request.body_exists and request.path not in STREAMED_BODIES:
            try:
                async with asyncio.timeout(guard.body_timeout):
                    await request.read()  # kept by aiohttp for the handler's read() / json()
            except TimeoutError:
                raise APIError(408, "request body not received within http_server.read_body_timeout") from None
        return await handler(request)
    finally:
        guard.idle(protocol)
