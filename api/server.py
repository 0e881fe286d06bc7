"""Running an aiohttp application on an address until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from tokentrace.api.connections import GUARD

__all__ = ["parse_addr", "run_until_stopped"]

#: Pending connections the kernel queues before accept (aiohttp's default is 128).
_BACKLOG = 1024


def parse_addr(addr: str) -> tuple[str, int]:
    """``":9090"`` → ("0.0.0.0", 9090); ``"127.0.0.1:9090"``, ``"[::1]:9090"`` likewise. ValueError if bad."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid address {addr!r}: expected HOST:PORT or :PORT, e.g. 127.0.0.1:9090")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


async def run_until_stopped(
    app: web.Application,
    addr: str,
    on_started: Callable[[str], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` on ``addr`` until a signal (or ``stop``) arrives, then shut down gracefully.

    The listening socket's connections go through the app's ``ConnectionGuard`` (``create_app`` puts one
    in ``app[GUARD]``): a cap on open connections and a deadline for request headers.
    """
    host, port = parse_addr(addr)
    guard = app.get(GUARD)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    listener: asyncio.Server | None = None
    try:
        loop = asyncio.get_running_loop()
        if guard is not None:
            guard.start(runner.server)
        listener = await loop.create_server(guard or runner.server, host, port, backlog=_BACKLOG, reuse_address=True)
        bound = listener.sockets[0].getsockname()[:2] if listener.sockets else (host, port)
        stop = stop or asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_started is not None:
            await on_started(f"http://{bound[0]}:{bound[1]}")
        await stop.wait()
    finally:
        if listener is not None:
            listener.close()
        if guard is not None:
            await guard.stop()
        await runner.cleanup()
