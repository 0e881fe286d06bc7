"""Running an aiohttp application on an address until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from tokentrace.api.connections import GUARD

__all__ = ["Site", "parse_addr", "run_until_stopped", "start_site"]

#: Pending connections the kernel queues before accept (aiohttp's default is 128).
_BACKLOG = 1024


def parse_addr(addr: str) -> tuple[str, int]:
    """``":9090"`` → ("0.0.0.0", 9090); ``"127.0.0.1:9090"``, ``"[::1]:9090"`` likewise. ValueError if bad."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid address {addr!r}: expected HOST:PORT or :PORT, e.g. 127.0.0.1:9090")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


class Site:
    """A running server: its bound base ``url``; ``close()`` stops listening, then the app."""

    def __init__(self, url: str, close: Callable[[], Awaitable[None]]) -> None:
        self.url = url
        self._close = close

    async def close(self) -> None:
        await self._close()


async def start_site(app: web.Application, addr: str, sock: socket.socket | None = None) -> Site:
    """Start serving ``app`` on ``addr`` (or on ``sock``, already bound).

    Connections go through the app's ``ConnectionGuard`` (``create_app`` puts one in ``app[GUARD]``): a cap on
    open connections and a deadline for request headers. OSError (address in use, permission denied) once
    nothing is left running.
    """
    host, port = parse_addr(addr)
    guard = app.get(GUARD)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    try:
        if guard is not None:
            guard.start(runner.server)
        factory = guard or runner.server
        if sock is None:
            listener = await loop.create_server(factory, host, port, backlog=_BACKLOG, reuse_address=True)
        else:
            listener = await loop.create_server(factory, sock=sock, backlog=_BACKLOG)
    except BaseException:
        if guard is not None:
            await guard.stop()
        await runner.cleanup()
        raise
    bound = listener.sockets[0].getsockname()[:2] if listener.sockets else (host, port)

    async def close() -> None:
        listener.close()
        if guard is not None:
            await guard.stop()
        await runner.cleanup()

    return Site(f"http://{bound[0]}:{bound[1]}", close)


async def run_until_stopped(
    app: web.Application,
    addr: str,
    on_started: Callable[[str], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` on ``addr`` (see ``start_site``) until a signal (or ``stop``) arrives, then shut down
    gracefully."""
    site = await start_site(app, addr)
    try:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_started is not None:
            await on_started(site.url)
        await stop.wait()
    finally:
        await site.close()
