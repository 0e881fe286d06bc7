"""A real HTTP server on loopback that records what is POSTed to it and answers from a script.

It checks HMAC signatures itself (with :mod:`hmac`, not tokentrace's code), as a user's receiver would.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    body: bytes
    headers: dict[str, str]
    at: float
    signature_ok: bool | None

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Answers request n with ``statuses[n]`` after ``delays[n]`` seconds (then 200 at once); error answers
    carry ``Retry-After: retry_after`` when given."""

    def __init__(
        self,
        statuses: Iterable[int] = (),
        *,
        delays: Iterable[float] = (),
        secret: str | None = None,
        retry_after: int | None = None,
        port: int = 0,
    ) -> None:
        self.statuses = collections.deque(statuses)
        self.delays = collections.deque(delays)
        self.secret = secret
        self.retry_after = retry_after
        self.port = port
        self.requests: list[Received] = []
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _signature_ok(self, request: web.Request, body: bytes) -> bool | None:
        if self.secret is None:
            return None
        timestamp = request.headers.get("X-Tokentrace-Timestamp", "")
        signature = request.headers.get("X-Tokentrace-Signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 60:
            return False
        expected = hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature, "sha256=" + expected)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Received(request.path, body, dict(request.headers), time.monotonic(), self._signature_ok(request, body))
        )
        self._arrived.set()
        delay = self.delays.popleft() if self.delays else 0.0
        status = self.statuses.popleft() if self.statuses else 200
        if delay:
            await asyncio.sleep(delay)
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None and status >= 400 else None
        return web.json_response({"status": status}, status=status, headers=headers)

    async def wait_for(self, count: int, within_s: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` requests arrived; the requests so far."""
        async with asyncio.timeout(within_s):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.requests

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
