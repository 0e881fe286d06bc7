"""A reverse proxy that loses answers: it forwards every POST, but answers some with 502 instead of the
server's 2xx — as a load balancer does when the backend's answer does not reach it in time. The client then
retries a batch the server has already made durable (the lost-202 case), deterministically."""

from __future__ import annotations

import asyncio
import socket
import threading

import aiohttp
from aiohttp import web

__all__ = ["LossyProxy"]


class LossyProxy:
    """``url`` forwards to ``upstream``; every ``lose_every``-th answer is replaced by a 502."""

    def __init__(self, upstream: str, lose_every: int = 3) -> None:
        self.upstream = upstream
        self.lose_every = lose_every
        self.forwarded = 0
        self.lost = 0  # 2xx answers the client never saw
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lossy-proxy", daemon=True)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    async def _open_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.post(f"{self.upstream}{request.path}", data=body, headers=headers) as answer:
            payload = await answer.read()
            status = answer.status
        self.forwarded += 1
        if 200 <= status < 300 and self.forwarded % self.lose_every == 0:
            self.lost += 1
            return web.json_response({"error": "bad gateway (the answer was lost)"}, status=502)
        return web.Response(body=payload, status=status, content_type="application/json")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._session = self._loop.run_until_complete(self._open_session())
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._forward)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.SockSite(runner, self._sock)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._session.close())
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def start(self) -> LossyProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
