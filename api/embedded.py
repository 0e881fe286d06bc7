"""The embedded default: ingest, aggregation, alerts and the API in one process, no Kafka or Redis."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from tokentrace.alerting.repository import FileRuleRepository, MemoryRuleRepository
from tokentrace.alerting.service import AlertService
from tokentrace.api.app import create_app
from tokentrace.api.context import ServerContext
from tokentrace.api.server import parse_addr, run_until_stopped
from tokentrace.api.stores.embedded import EmbeddedSettings, EmbeddedStore
from tokentrace.config import Config, price_table, timeline_settings
from tokentrace.core.alerts.rules import AlertRule, rules_from_config
from tokentrace.core.ingest import Pricer
from tokentrace.core.timefmt import parse_duration
from tokentrace.core.timeline_reader import TimelineReader

__all__ = [
    "alert_service",
    "embedded_services",
    "embedded_settings",
    "price_table",
    "serve_embedded",
    "settle_heap",
]

log = logging.getLogger(__name__)


def embedded_settings(config: Config) -> EmbeddedSettings:
    """Store settings from the ``storage`` and ``aggregation`` sections."""
    storage = config.storage
    snapshot_interval_s = parse_duration(storage.snapshot_interval)
    return EmbeddedSettings(
        timeline=timeline_settings(config),
        max_spans=storage.max_spans,
        trace_retention_ms=storage.trace_retention_ms,
        snapshot_interval_s=snapshot_interval_s,
        maintenance_interval_s=min(EmbeddedSettings().maintenance_interval_s, snapshot_interval_s),
    )


def alert_service(
    config: Config, store: EmbeddedStore, external_url: str, rules: Iterable[AlertRule] | None = None
) -> AlertService:
    """Config rules (or ``rules``, from code) plus API rules and silences persisted next to the store's
    data (kept in memory by a memory-only store)."""
    return AlertService(
        TimelineReader(lambda: store.timeline),
        rules=rules_from_config(config.alerts) if rules is None else rules,
        repository=MemoryRuleRepository() if store.data_dir is None else FileRuleRepository(store.data_dir),
        external_url=config.alerting.external_url or external_url,
    )


def _listen_url(addr: str) -> str:
    host, port = parse_addr(addr)
    return f"http://{'localhost' if host == '0.0.0.0' else host}:{port}"


@contextlib.asynccontextmanager
async def embedded_services(
    config: Config,
    data_dir: Path | None,
    *,
    rules: Iterable[AlertRule] | None = None,
    pricer: Pricer | None = None,
    final_round: bool = False,
) -> AsyncIterator[ServerContext]:
    """The embedded store, the alert service with its evaluation timer running, and the context the
    handlers read, for the duration of the block; on exit the timer stops, (with ``final_round``) the
    rules are evaluated once more, queued notifications go out and the store closes.

    ``data_dir`` None is memory-only. ``rules`` replace the config's ``alerts`` (rules from code);
    ``pricer`` the config's price table. Shared by ``tokentrace serve`` and the SDK's in-process mode.
    """
    store = EmbeddedStore(data_dir, embedded_settings(config))
    await store.open()
    try:
        alerts = alert_service(config, store, _listen_url(config.http_server.addr), rules)
        try:
            await alerts.start()
            ctx = ServerContext(store=store, config=config, pricer=pricer or price_table(config), alerts=alerts)
            timer = asyncio.create_task(alerts.run(parse_duration(config.alerting.interval)))
            try:
                yield ctx
            finally:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
                if final_round:
                    try:
                        await alerts.evaluate_async()
                    except Exception:
                        log.exception("final alert evaluation round failed")
        finally:
            await alerts.aclose()
    finally:
        await store.close()


def settle_heap(pricer: object) -> None:
    """Load the price data now rather than in the first request, then move every object made so far (modules,
    price data, the recovered state) out of the cycle collector's sight (``gc.freeze``): they live as long as the
    server, and each full collection of an ingesting server walked them all again. Objects made later are
    collected as before; frozen ones are still freed when no longer referenced (none of them forms a cycle).
    """
    knows = getattr(pricer, "knows", None)
    if knows is not None:
        knows("gpt-4o")
    gc.collect()
    gc.freeze()


async def serve_embedded(
    config: Config,
    data_dir: Path,
    alongside: Callable[[str], Coroutine[Any, Any, None]] | None = None,
    on_started: Callable[[str], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the embedded server until stopped; ``alongside(url)`` (``tokentrace serve --demo``'s traffic, say)
    runs as a task once it listens, given its local URL, and is cancelled when it stops."""
    async with embedded_services(config, data_dir) as ctx:
        settle_heap(ctx.pricer)
        background: list[asyncio.Task[None]] = []

        async def started(url: str) -> None:
            if alongside is not None:
                background.append(asyncio.create_task(alongside(url.replace("0.0.0.0", "127.0.0.1"))))
            if on_started is not None:
                await on_started(url)

        try:
            await run_until_stopped(create_app(ctx), config.http_server.addr, started, stop)
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
