"""In-process mode: the server's aggregator, alert engine and HTTP API inside the application, no daemon.

``Tracer(alerts=[...])`` and/or ``Tracer(http_server=HTTPServerConfig(...))`` start one :class:`InProcess`:
a daemon thread running its own asyncio loop (never the application's loop), where the very pieces of
``tokentrace serve`` run — :func:`tokentrace.api.embedded.embedded_services` (the embedded store, memory-only
unless ``data_dir`` is given, and the alert service with its evaluation timer) and, with ``http_server``,
:func:`tokentrace.api.app.create_app` listening through :func:`tokentrace.api.server.start_site`. So the
in-process API, its metrics, alert payloads and deliveries are the server's, byte for byte.

The application never waits on that thread. ``Tracer.send`` hands each finished batch (a trace's spans at
``Trace.end``) to :meth:`InProcess.add`: a list append under a lock, plus one loop wake-up when the
aggregator is idle. Woken, the loop lets spans gather for :data:`GATHER_S` (metrics lag by about that;
``flush`` and ``close`` cut it short), then takes what has accumulated and applies it in chunks of :data:`CHUNK` spans,
yielding between chunks, so neither the aggregator nor a query holds the GIL for long. Past
``max_pending`` spans not yet applied, batches are dropped and counted rather than queued without bound.

:meth:`InProcess.close` (``Tracer.close``, the tracer's ``with`` block, or interpreter exit) applies what is
pending, stops the HTTP server, runs one last alert round (a short script's spending still alerts), lets
queued notifications go out (at most 5 s) and joins the thread. A forked child (gunicorn workers) does not
inherit the thread: there the aggregator stops taking spans and says so once; such deployments send spans
to ``tokentrace serve`` (HTTPTransport) or the distributed mode instead.

This module imports aiohttp and the server only inside :class:`InProcess`, so ``Tracer`` stays light.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokentrace.core.alerts import AlertRule
from tokentrace.core.alerts.durations import duration_text
from tokentrace.core.ingest import Pricer, SpanRejected, prepare_spans
from tokentrace.core.span import Span
from tokentrace.core.timefmt import now_ms, parse_duration

if TYPE_CHECKING:
    from tokentrace.api.context import ServerContext
    from tokentrace.config import Config, HTTPServerConfig

__all__ = ["CHUNK", "DEFAULT_INDEXED_SPANS", "InProcess"]

log = logging.getLogger(__name__)

#: Spans applied per event-loop step.
CHUNK = 512
#: How long the aggregator lets spans gather after a wake-up before taking them: one wake-up (a write to
#: the loop's self-pipe) and one GIL hand-over per this interval under load, not one per trace.
GATHER_S = 0.01
#: Spans the trace index keeps for ``/traces`` (``storage.max_spans``; the server keeps 100,000). Each
#: indexed trace is two objects the application's garbage collector walks in every full collection.
DEFAULT_INDEXED_SPANS = 10_000
#: How long construction waits for the store, the alert service and the listening socket.
START_TIMEOUT_S = 30.0
#: How long ``close`` waits for the thread: pending spans, the last round and deliveries (5 s at most).
CLOSE_TIMEOUT_S = 15.0

_live: weakref.WeakSet[InProcess] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for inprocess in list(_live):
        inprocess._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _config(
    http_server: HTTPServerConfig | None, alert_interval: str | float, data_dir: Path | None, max_indexed_spans: int
) -> tuple[Config, str | None]:
    """The server configuration the in-process mode runs with, and the address to listen on (if any)."""
    from tokentrace.config import AlertingConfig, Config, HTTPServerConfig, StorageConfig

    interval = duration_text(alert_interval, "alert_interval")
    parse_duration(interval)
    server = http_server if http_server is not None else HTTPServerConfig(enabled=False)
    storage = StorageConfig(max_spans=max_indexed_spans)
    if data_dir is not None:
        storage.data_dir = str(data_dir)
    config = Config(http_server=server, storage=storage, alerting=AlertingConfig(interval=interval))
    addr = server.addr if server.enabled else None
    if addr is not None:
        from tokentrace.api.server import parse_addr

        parse_addr(addr)  # ValueError now, in the caller's thread
    return config, addr


def _bind_any_port(host: str) -> socket.socket:
    """A listening socket on a free port of ``host`` (for ``addr`` port 0), bound before the alert service
    is built so its Alertmanager links name the real port."""
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class InProcess:
    """The aggregator, alert timer and (optionally) HTTP server of one tracer, on a thread of their own.

    Construction returns once everything runs (or raises: OSError when the address is taken, ValueError
    for a bad setting). ``url`` is the server's base URL (``None`` without ``http_server``).
    """

    def __init__(
        self,
        *,
        rules: Sequence[AlertRule] = (),
        alert_interval: str | float = "15s",
        http_server: HTTPServerConfig | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        pricer: Pricer | None = None,
        max_indexed_spans: int = DEFAULT_INDEXED_SPANS,
        max_pending: int = 100_000,
    ) -> None:
        for rule in rules:
            if not isinstance(rule, AlertRule):
                raise TypeError(f"alerts must be AlertRule objects, got {type(rule).__name__}")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if max_indexed_spans < 1:
            raise ValueError("max_indexed_spans must be >= 1")
        directory = None if data_dir is None else Path(data_dir)
        self._config, self._addr = _config(http_server, alert_interval, directory, max_indexed_spans)
        self._data_dir = directory
        self._rules = list(rules)
        self._pricer = pricer
        self._max_pending = max_pending
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[Span] = []
        self._scheduled = False
        self._stopping = False
        self._added = 0
        self._applied = 0
        self._forked = False
        self._fork_warned = False
        #: Spans dropped because ``max_pending`` were waiting, or the aggregator was closed or forked away.
        self.dropped = 0
        self.url: str | None = None
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        ready: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="tokentrace-inprocess", daemon=True)
        self._thread.start()
        try:
            self.url = ready.result(START_TIMEOUT_S)
        except BaseException:
            self._stop()
            self._thread.join(CLOSE_TIMEOUT_S)
            raise
        _live.add(self)
        atexit.register(self.close)

    # --- the application's side ------------------------------------------------------------------------

    def add(self, spans: Sequence[Span]) -> None:
        """Queue finished spans for aggregation; never blocks, never raises."""
        if self._forked:
            self._forked_drop(len(spans))
            return
        with self._cond:
            if self._stopping or len(self._pending) + len(spans) > self._max_pending:
                first = self.dropped == 0
                self.dropped += len(spans)
                if first and not self._stopping:
                    log.warning(
                        "in-process aggregator is %d spans behind; dropping spans (counted in .dropped)",
                        len(self._pending),
                    )
                return
            self._pending.extend(spans)
            self._added += len(spans)
            if self._scheduled:
                return
            self._scheduled = True
        self._signal()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every span added so far is counted (at most ``timeout`` s); False on timeout."""
        if self._forked:
            return True
        with self._cond:
            target = self._added
            if self._applied >= target:
                return True
        self._signal(hurry=True)
        with self._cond:
            self._cond.wait_for(lambda: self._applied >= target or not self._thread.is_alive(), timeout)
            return self._applied >= target

    def close(self) -> None:
        """Apply what is pending, stop the server and the alert timer (after a last round), join the
        thread. Idempotent; also runs at interpreter exit."""
        atexit.unregister(self.close)
        if self._forked:
            return
        self._stop()
        if threading.current_thread() is self._thread:  # from an alert sink, say: it stops once this returns
            return
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("in-process aggregator did not stop within %gs", CLOSE_TIMEOUT_S)

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
        self._signal(hurry=True)

    def _signal(self, hurry: bool = False) -> None:
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed, the thread has ended
            self._loop.call_soon_threadsafe(self._set_wake, hurry)

    def _forked_drop(self, count: int) -> None:
        self.dropped += count
        if not self._fork_warned:
            self._fork_warned = True
            log.warning(
                "tokentrace in-process aggregator: this process (pid %d) was forked from the one that started "
                "it and has no aggregator; its spans are not counted here. Give each worker its own tracer, "
                "or send spans to `tokentrace serve` / the distributed mode",
                os.getpid(),
            )

    # --- the loop's side -------------------------------------------------------------------------------

    def _set_wake(self, hurry: bool) -> None:
        if self._wake is not None and self._hurry is not None:
            self._wake.set()
            if hurry:
                self._hurry.set()

    def _run(self, ready: concurrent.futures.Future[str | None]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main(ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("in-process aggregator stopped")
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._loop.close()

    async def _main(self, ready: concurrent.futures.Future[str | None]) -> None:
        from tokentrace.api.app import create_app
        from tokentrace.api.embedded import embedded_services
        from tokentrace.api.server import parse_addr, start_site

        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        sock = None
        config = self._config
        if self._addr is not None:
            host, port = parse_addr(self._addr)
            if port == 0:
                sock = _bind_any_port(host)
                if config.alerting.external_url is None:
                    bound = "localhost" if host in ("0.0.0.0", "::") else host
                    bound = f"[{bound}]" if ":" in bound else bound
                    config.alerting.external_url = f"http://{bound}:{sock.getsockname()[1]}"
        site = None
        try:
            services = embedded_services(
                config, self._data_dir, rules=self._rules, pricer=self._pricer, final_round=True
            )
            async with services as ctx:
                url = None
                if self._addr is not None:
                    try:
                        site = await start_site(create_app(ctx), self._addr, sock)
                        url = site.url
                    except OSError as exc:
                        raise OSError(
                            exc.errno,
                            f"tokentrace in-process server cannot listen on {self._addr}: {exc.strerror or exc} "
                            "(is another tracer or `tokentrace serve` using it? choose another http_server addr)",
                        ) from exc
                try:
                    ready.set_result(url)
                    await self._consume(ctx)
                finally:
                    if site is not None:
                        await site.close()
        finally:
            if sock is not None and site is None:  # never handed to a running server
                sock.close()

    async def _consume(self, ctx: ServerContext) -> None:
        """Apply pending spans whenever woken, until stopping with nothing left."""
        assert self._wake is not None and self._hurry is not None
        skew_ms = round(parse_duration(ctx.config.aggregation.max_future_skew) * 1000)
        while True:
            await self._wake.wait()
            if not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), GATHER_S)
            self._wake.clear()
            self._hurry.clear()
            with self._cond:
                batch, self._pending = self._pending, []
                self._scheduled = False
                stopping = self._stopping
            for start in range(0, len(batch), CHUNK):
                await self._apply(ctx, batch[start : start + CHUNK], skew_ms)
                with self._cond:
                    self._applied += len(batch[start : start + CHUNK])
                    self._cond.notify_all()
                await asyncio.sleep(0)
            if stopping:
                return

    async def _apply(self, ctx: ServerContext, spans: list[Span], skew_ms: int) -> None:
        """Stamp, bound-check and count ``spans`` as ``POST /spans`` would, span by span."""
        from tokentrace.api.stores.base import StoreUnavailable

        arrival = now_ms()
        outcomes = prepare_spans(spans, arrival, ctx.pricer, ctx.store.oldest_allowed_ms(arrival), skew_ms)
        accepted = [span for span, outcome in zip(spans, outcomes, strict=True) if type(outcome) is int]
        if len(accepted) != len(spans):
            rejections = [outcome for outcome in outcomes if isinstance(outcome, SpanRejected)]
            for rejection in rejections:
                ctx.rejected[rejection.reason] += 1
            log.warning("in-process aggregator: %d spans not counted, first: %s", len(rejections), rejections[0])
        if not accepted:
            return
        try:
            await ctx.store.ingest(accepted)
        except StoreUnavailable as exc:
            ctx.rejected["unavailable"] += 1
            log.error("in-process aggregator: %d spans not counted: %s", len(accepted), exc)
