"""Running an aiohttp application on an address until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["parse_addr", "run_until_stopped", "start_site"]


def parse_addr(addr: str) -> tuple[str, int]:
    """``":9090"`` → ("0.0.0.0", 9090); ``"127.0.0.1:9090"``, ``"[::1]:9090"`` likewise. ValueError if bad."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid address {addr!r}: expected HOST:PORT or :PORT, e.g. 127.0.0.1:9090")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


async def start_site(app: web.Application, addr: str, sock: socket.socket | None = None) -> tuple[web.AppRunner, str]:
    """Start serving ``app`` on ``addr`` (or on ``sock``, already bound): the runner (``cleanup()`` stops
    it) and the bound base URL. OSError (address in use, permission denied) once nothing is left running."""
    host, port = parse_addr(addr)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port) if sock is None else web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0] if runner.addresses else (host, port)
    return runner, f"http://{bound[0]}:{bound[1]}"


async def run_until_stopped(
    app: web.Application,
    addr: str,
    on_started: Callable[[str], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` on ``addr`` until a signal (or ``stop``) arrives, then shut down gracefully."""
    runner, url = await start_site(app, addr)
    try:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_started is not None:
            await on_started(url)
        await stop.wait()
    finally:
        await runner.cleanup()
