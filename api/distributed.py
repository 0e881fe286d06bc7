"""The distributed API replica: the same application as the embedded server over ``RedisStore``.

Stateless: ``POST /spans`` publishes to Kafka and answers 202 once the broker acknowledged; every read
comes from the Redis view the workers maintain, and ``/alerts`` from the rules, silences and states the
replicas and the evaluating worker share in Redis. Run as many replicas as you like behind a load balancer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tokentrace.alerting.redis_shared import shared_alert_service
from tokentrace.api.app import create_app
from tokentrace.api.context import ServerContext
from tokentrace.api.server import run_until_stopped
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.config import Config, price_table, timeline_settings
from tokentrace.core.timeline_reader import TimelineReader
from tokentrace.kafka_topics import ensure_topic
from tokentrace.view.keys import DEFAULT_PREFIX

__all__ = ["distributed_context", "redis_store", "serve_distributed"]


def redis_store(config: Config, prefix: str | None = None) -> RedisStore:
    """A (not yet opened) store for the configuration's Kafka and Redis."""
    return RedisStore(
        config.redis.url,
        config.kafka.bootstrap_servers,
        config.kafka.topic,
        timeline_settings(config),
        prefix=prefix or DEFAULT_PREFIX,
    )


async def distributed_context(config: Config, prefix: str | None = None) -> ServerContext:
    """Create the span topic if needed, open a store and wrap it in a server context (close ``ctx.store``)."""
    kafka = config.kafka
    await ensure_topic(kafka.bootstrap_servers, kafka.topic, kafka.partitions, kafka.replication_factor)
    store = redis_store(config, prefix)
    await store.open()
    alerts = shared_alert_service(config, store.redis, store.keys.prefix, TimelineReader(lambda: store.timeline))
    await alerts.start()
    return ServerContext(
        store=store,
        config=config,
        pricer=price_table(config),
        alerts=alerts,
        extra_counters=store.counters,
        extra_gauges=store.gauges,
    )


async def serve_distributed(
    config: Config,
    prefix: str | None = None,
    on_started: Callable[[str], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run one API replica until stopped."""
    ctx = await distributed_context(config, prefix)
    store = ctx.store
    assert isinstance(store, RedisStore)
    try:
        await run_until_stopped(create_app(ctx), config.http_server.addr, on_started, stop)
    finally:
        if ctx.alerts is not None:
            await ctx.alerts.aclose()
        await store.close()
