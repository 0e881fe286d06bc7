"""``tokentrace worker`` and ``tokentrace api``: the distributed deployment's two commands.

Both read ``tokentrace.yml`` (``kafka.*``, ``redis.url``, ``storage.*``, ``aggregation.*``), then flags and
``TOKENTRACE_*`` environment variables override it. ``python -m tokentrace.processors.cli worker|api``
runs them without the top-level command.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tokentrace.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from tokentrace.processors.worker import WorkerSettings

__all__ = ["api", "cli", "worker", "worker_settings"]

cli = typer.Typer(help="tokentrace distributed mode.", no_args_is_help=True, add_completion=False)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="tokentrace.yml to read.", dir_okay=False)]
BootstrapOption = Annotated[
    str | None,
    typer.Option(
        help="Kafka bootstrap servers (kafka.bootstrap_servers).", envvar="TOKENTRACE_KAFKA_BOOTSTRAP_SERVERS"
    ),
]
RedisOption = Annotated[str | None, typer.Option(help="Redis URL (redis.url).", envvar="TOKENTRACE_REDIS_URL")]
TopicOption = Annotated[str | None, typer.Option(help="Span topic (kafka.topic).", envvar="TOKENTRACE_KAFKA_TOPIC")]
PartitionsOption = Annotated[
    int | None,
    typer.Option(help="Partitions when creating the topic (kafka.partitions).", envvar="TOKENTRACE_KAFKA_PARTITIONS"),
]
ReplicationOption = Annotated[
    int | None,
    typer.Option(
        help="Replication factor of the topics created (kafka.replication_factor).",
        envvar="TOKENTRACE_KAFKA_REPLICATION_FACTOR",
    ),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v")]


def _config(
    path: Path | None,
    bootstrap: str | None,
    redis_url: str | None,
    topic: str | None,
    partitions: int | None,
    replication: int | None = None,
) -> Config:
    try:
        config = load_config(path)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if bootstrap:
        config.kafka.bootstrap_servers = bootstrap
    if redis_url:
        config.redis.url = redis_url
    if topic:
        config.kafka.topic = topic
    if partitions:
        config.kafka.partitions = partitions
    if replication:
        config.kafka.replication_factor = replication
    _check_kafka_names(config)
    return config


def _check_kafka_names(config: Config) -> None:
    """Exit with a one-line error when a flag or variable set a name Kafka would refuse."""
    try:
        config.kafka.check_names()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _log_build() -> None:
    """Log which code this process runs: the package's directory and whether its compiled core is loaded."""
    import tokentrace
    from tokentrace.core import native

    compiled = sys.modules.get("tokentrace._native")
    logging.getLogger("tokentrace.worker").info(
        "code from %s; compiled core: %s",
        Path(tokentrace.__file__).parent,
        getattr(compiled, "__file__", None) if native.AVAILABLE else "not in use (Python fallback)",
    )


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def worker_settings(config: Config, prefix: str | None = None) -> WorkerSettings:
    """The worker's settings from a configuration."""
    from tokentrace.api.embedded import embedded_settings
    from tokentrace.api.stores.redis_view import DEFAULT_PREFIX
    from tokentrace.core.timefmt import parse_duration
    from tokentrace.processors.worker import WorkerSettings

    store = embedded_settings(config)
    return WorkerSettings(
        bootstrap_servers=config.kafka.bootstrap_servers,
        redis_url=config.redis.url,
        topic=config.kafka.topic,
        partitions=config.kafka.partitions,
        replication_factor=config.kafka.replication_factor,
        app_id=config.kafka.app_id,
        prefix=prefix or DEFAULT_PREFIX,
        timeline=store.timeline,
        max_future_ms=round(parse_duration(config.aggregation.max_future_skew) * 1000),
        trace_retention_ms=store.trace_retention_ms,
        dead_letter_topic=config.kafka.dead_letter_topic,
        session_timeout_s=parse_duration(config.kafka.session_timeout),
        alerts_config=config,
        alert_interval_s=parse_duration(config.alerting.interval),
    )


@cli.command("worker")
def worker(
    config_path: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
    redis_url: RedisOption = None,
    topic: TopicOption = None,
    partitions: PartitionsOption = None,
    replication_factor: ReplicationOption = None,
    app_id: Annotated[
        str | None,
        typer.Option(
            help="Consumer group and table namespace, one per deployment (kafka.app_id).", envvar="TOKENTRACE_APP_ID"
        ),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Redis key prefix of the view.", envvar="TOKENTRACE_REDIS_PREFIX")
    ] = None,
    dead_letter_topic: Annotated[
        str | None,
        typer.Option(
            help="Copy poison messages to this topic, created if missing (kafka.dead_letter_topic).",
            envvar="TOKENTRACE_DEAD_LETTER_TOPIC",
        ),
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
    import faust

    from tokentrace.api.embedded import price_table
    from tokentrace.processors.topics import KafkaUnreachable, ensure_topic
    from tokentrace.processors.worker import build_app

    _logging(verbose)
    _log_build()
    config = _config(config_path, bootstrap_servers, redis_url, topic, partitions, replication_factor)
    if app_id:
        config.kafka.app_id = app_id
    if dead_letter_topic:
        config.kafka.dead_letter_topic = dead_letter_topic
    _check_kafka_names(config)
    settings = worker_settings(config, prefix=prefix)
    if session_timeout is not None:
        settings.session_timeout_s = session_timeout
    if fetch_bytes is not None:
        settings.fetch_partition_bytes = fetch_bytes
    if state_schema is not None:
        settings.state_schema = state_schema
    dead_letter_topic = settings.dead_letter_topic

    async def topics() -> int:
        partitions = await ensure_topic(
            settings.bootstrap_servers, settings.topic, settings.partitions, settings.replication_factor
        )
        if dead_letter_topic:
            await ensure_topic(settings.bootstrap_servers, dead_letter_topic, partitions, settings.replication_factor)
        return partitions

    try:
        settings.partitions = asyncio.run(topics())
    except KafkaUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_app(settings, price_table(config))
    code: int | str | None = 0
    try:
        faust.Worker(app, loglevel="debug" if verbose else "info", quiet=True).execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
    # Faust has closed its loop; its consumer thread sometimes lingers and would keep the process alive
    # (and in the consumer group's way). Everything worth keeping is in Kafka by now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


@cli.command("api")
def api(
    config_path: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
    redis_url: RedisOption = None,
    topic: TopicOption = None,
    partitions: PartitionsOption = None,
    replication_factor: ReplicationOption = None,
    addr: Annotated[str | None, typer.Option(help="Listen address, e.g. :9090 or 127.0.0.1:9090.")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Redis key prefix of the view.", envvar="TOKENTRACE_REDIS_PREFIX")
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Run a stateless API replica: POST /spans to Kafka (acks=all), queries from the Redis view."""
    from tokentrace.api.distributed import serve_distributed
    from tokentrace.processors.topics import KafkaUnreachable

    _logging(verbose)
    config = _config(config_path, bootstrap_servers, redis_url, topic, partitions, replication_factor)
    if addr is not None:
        config.http_server.addr = addr

    async def started(url: str) -> None:
        typer.echo(
            f"tokentrace api serving on {url} (kafka {config.kafka.bootstrap_servers}, redis {config.redis.url})",
            err=True,
        )

    try:
        asyncio.run(serve_distributed(config, prefix=prefix, on_started=started))
    except KafkaUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    sys.exit(cli())
