"""``tokentrace dev-cluster``: Kafka, Redis, N workers, M API replicas (and demo traffic) in one command.

Everything runs on 127.0.0.1 as children of this command, each in its own process group, under a
``Supervisor``: Ctrl-C or SIGTERM stops them all (demo, APIs, workers, then Redis and Kafka), and a child
that exits stops the rest and prints its log's tail (exit code 1). Without ``--data-dir`` data and logs
live in a temp dir removed on exit; with it, the broker's and Redis's data and the logs stay there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tokentrace.cli._common import DEMO_RATE, settings
from tokentrace.devcluster.ports import DEFAULT_API_PORT, DEFAULT_KAFKA_PORT, DEFAULT_REDIS_PORT

__all__ = ["dev_cluster"]


def _say(line: str) -> None:
    typer.echo(line)
    sys.stdout.flush()


def dev_cluster(
    workers: Annotated[int, typer.Option(min=1, help="Stream workers to run.")] = 2,
    apis: Annotated[int, typer.Option(min=1, help="API replicas to run (ports --api-port, +1, ...).")] = 1,
    demo: Annotated[bool, typer.Option(help="Also send demo traffic to the first API replica.")] = False,
    demo_rate: Annotated[float, typer.Option(min=0.1, help="Demo spans per second.")] = DEMO_RATE,
    kafka_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help=f"Kafka client port (default {DEFAULT_KAFKA_PORT} if free; 0: a free one)."
        ),
    ] = None,
    redis_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help=f"Redis port (default {DEFAULT_REDIS_PORT} if free; 0: a free one)."),
    ] = None,
    api_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help=f"First API replica's port (default {DEFAULT_API_PORT} if free; 0: free ones)."
        ),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(min=1, help="Partitions of the span topic when it is created (default: kafka.partitions)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Keep Kafka's and Redis's data (and the logs) here between runs."),
    ] = None,
    config_path: Annotated[
        Path | None, typer.Option("--config", "-c", help="tokentrace.yml for the workers and APIs.", dir_okay=False)
    ] = None,
) -> None:
    """Run the distributed mode on this machine: Kafka, Redis, workers, API replicas. Ctrl-C stops it all."""
    # Imported here: the cluster code (Kafka, Redis clients) would add ~0.3 s to every `tokentrace serve` start.
    from tokentrace.devcluster.cluster import DevCluster, missing_tools
    from tokentrace.devcluster.procs import DevClusterError
    from tokentrace.devcluster.supervisor import Stopped, Supervisor

    problems = missing_tools()
    if problems:
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(1)
    config = settings(config_path, {"kafka.partitions": ("--partitions", partitions)})

    began = time.monotonic()
    cluster = DevCluster(
        workers=workers,
        apis=apis,
        demo_rate=demo_rate if demo else None,
        kafka_port=kafka_port,
        redis_port=redis_port,
        api_port=api_port,
        partitions=config.kafka.partitions,
        data_dir=data_dir,
        config_path=config_path.resolve() if config_path else None,
        api_token=config.http_server.auth_token,
        say=_say,
    )
    code = 0
    try:
        with Supervisor() as supervisor:
            try:
                cluster.start(supervisor)
                for line in cluster.banner(time.monotonic() - began):
                    _say(line)
                supervisor.watch()
            except Stopped as stop:
                _say(f"{stop}: stopping the dev cluster ...")
            except DevClusterError as exc:
                typer.echo(f"error: {exc}", err=True)
                typer.echo("stopping the dev cluster ...", err=True)
                code = 1
        _say("stopped")
    finally:
        cluster.cleanup()
    raise typer.Exit(code)
