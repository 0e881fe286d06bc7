"""A real local aiohttp server speaking ``POST /spans`` (the server's contract: api/openapi.yaml), run in its own thread.

Tests script its answers (``script(503, 202)``) and read what arrived (``requests``), so the HTTP transport
is exercised over real sockets rather than against a mock.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web

from tokentrace.core.codec import decode_json_spans
from tokentrace.core.span import Span


@dataclass
class Received:
    """One request the server got: headers and decoded spans (empty when the body was invalid)."""

    headers: dict[str, str]
    spans: list[Span]
    status: int


class SpanServer:
    """``url`` is the base URL (the transport appends ``/spans``)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._script: deque[int] = deque()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="span-server", daemon=True)
        self.delay = 0.0

    def script(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (then 202 again)."""
        with self._lock:
            self._script.extend(statuses)

    @property
    def spans(self) -> list[Span]:
        """All spans the server accepted (answered 2xx)."""
        return [s for r in list(self.requests) if 200 <= r.status < 300 for s in r.spans]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            status = self._script.popleft() if self._script else 202
        try:
            spans = decode_json_spans(body)
        except msgspec.DecodeError as exc:
            self.requests.append(Received(dict(request.headers), [], 400))
            return web.json_response({"error": str(exc)}, status=400)
        self.requests.append(Received(dict(request.headers), spans, status))
        if 200 <= status < 300:
            return web.json_response({"accepted": len(spans)}, status=status)
        headers = {"Retry-After": "0"} if status in (429, 503) else None
        return web.json_response({"error": f"scripted {status}"}, status=status, headers=headers)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/spans", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.SockSite(self._runner, self._sock)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> SpanServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("span server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def dead_url() -> str:
    """A URL where nothing listens (the port was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
