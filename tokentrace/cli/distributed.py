"""The distributed mode's commands: ``worker`` (processors) and ``api`` (an API replica).

Both read ``tokentrace.yml`` (``kafka.*``, ``redis.url``, ``storage.*``, ``aggregation.*``), then
``TOKENTRACE_*`` environment variables, then flags (``tokentrace.config.load_settings``). The flags default
to None, meaning "the configuration's value".
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from tokentrace.cli._common import ConfigOption, VerboseOption, fail, settings, setup_logging
from tokentrace.config import Config

__all__ = ["api", "worker"]

BootstrapOption = Annotated[str | None, typer.Option(help="Kafka bootstrap servers (kafka.bootstrap_servers).")]
RedisOption = Annotated[str | None, typer.Option(help="Redis URL (redis.url).")]
TopicOption = Annotated[str | None, typer.Option(help="Span topic (kafka.topic).")]
PartitionsOption = Annotated[int | None, typer.Option(help="Partitions when creating the topic (kafka.partitions).")]
ReplicationOption = Annotated[
    int | None, typer.Option(help="Replication factor of the topics created (kafka.replication_factor).")
]
PrefixOption = Annotated[
    str | None, typer.Option(help="Redis key prefix of the view.", envvar="TOKENTRACE_REDIS_PREFIX")
]


def _settings(
    config_path: Path | None,
    bootstrap_servers: str | None,
    redis_url: str | None,
    topic: str | None,
    partitions: int | None,
    replication_factor: int | None,
    more: dict[str, tuple[str, object]],
) -> Config:
    """The settings the two commands share flags for, plus ``more`` (``section.key`` -> (flag, value))."""
    return settings(
        config_path,
        {
            "kafka.bootstrap_servers": ("--bootstrap-servers", bootstrap_servers),
            "redis.url": ("--redis-url", redis_url),
            "kafka.topic": ("--topic", topic),
            "kafka.partitions": ("--partitions", partitions),
            "kafka.replication_factor": ("--replication-factor", replication_factor),
            **more,
        },
    )


def worker(
    config_path: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
    redis_url: RedisOption = None,
    topic: TopicOption = None,
    partitions: PartitionsOption = None,
    replication_factor: ReplicationOption = None,
    app_id: Annotated[
        str | None, typer.Option(help="Consumer group and table namespace, one per deployment (kafka.app_id).")
    ] = None,
    prefix: PrefixOption = None,
    dead_letter_topic: Annotated[
        str | None,
        typer.Option(help="Copy poison messages to this topic, created if missing (kafka.dead_letter_topic)."),
    ] = None,
    session_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds before a silent worker's partitions move to the others (kafka.session_timeout)."),
    ] = None,
    fetch_bytes: Annotated[
        int | None,
        typer.Option(
            min=65_536,
            help="Most bytes fetched per partition and request (default 8 MiB; at least your largest message).",
            envvar="TOKENTRACE_FETCH_BYTES",
        ),
    ] = None,
    state_schema: Annotated[
        int | None,
        typer.Option(
            min=1,
            hidden=True,
            help="Run as a build of this state schema (its own table and view, rebuilt from the topic): for "
            "upgrade tests.",
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Run a stream worker: consume the span topic, keep exact aggregates, materialize them into Redis."""
    from tokentrace.kafka_topics import KafkaUnreachable
    from tokentrace.processors.run import log_build, run_worker
    from tokentrace.processors.worker import WorkerSettings

    setup_logging(verbose)
    log_build()
    config = _settings(
        config_path,
        bootstrap_servers,
        redis_url,
        topic,
        partitions,
        replication_factor,
        {
            "kafka.app_id": ("--app-id", app_id),
            "kafka.dead_letter_topic": ("--dead-letter-topic", dead_letter_topic),
            "kafka.session_timeout": ("--session-timeout", None if session_timeout is None else f"{session_timeout}s"),
        },
    )
    worker_settings = WorkerSettings.from_config(config, prefix=prefix)
    if fetch_bytes is not None:
        worker_settings.fetch_partition_bytes = fetch_bytes
    if state_schema is not None:
        worker_settings.state_schema = state_schema
    try:
        run_worker(worker_settings, config, verbose)
    except KafkaUnreachable as exc:
        fail(str(exc), 1)


def api(
    config_path: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
    redis_url: RedisOption = None,
    topic: TopicOption = None,
    partitions: PartitionsOption = None,
    replication_factor: ReplicationOption = None,
    addr: Annotated[str | None, typer.Option(help="Listen address, e.g. :9090 or 127.0.0.1:9090.")] = None,
    prefix: PrefixOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Run a stateless API replica: POST /spans to Kafka (acks=all), queries from the Redis view."""
    from tokentrace.api.distributed import serve_distributed
    from tokentrace.kafka_topics import KafkaUnreachable

    setup_logging(verbose)
    config = _settings(
        config_path,
        bootstrap_servers,
        redis_url,
        topic,
        partitions,
        replication_factor,
        {"http_server.addr": ("--addr", addr)},
    )

    async def started(url: str) -> None:
        typer.echo(
            f"tokentrace api serving on {url} (kafka {config.kafka.bootstrap_servers}, redis {config.redis.url})",
            err=True,
        )

    try:
        asyncio.run(serve_distributed(config, prefix=prefix, on_started=started))
    except KafkaUnreachable as exc:
        fail(str(exc), 1)
