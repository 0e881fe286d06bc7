"""Running one stream worker process: create the topics, build the Faust app, run it until it stops."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from tokentrace.config import Config, price_table
from tokentrace.kafka_topics import ensure_topic
from tokentrace.processors.worker import WorkerSettings

__all__ = ["log_build", "run_worker"]

log = logging.getLogger("tokentrace.worker")


def log_build() -> None:
    """Log which code this process runs: the package's directory and whether its compiled core is loaded."""
    from tokentrace.core import native

    compiled = sys.modules.get("tokentrace._native")
    log.info(
        "code from %s; compiled core: %s",
        Path(native.__file__).parents[1],  # the tokentrace package: tokentrace/core/native.py
        getattr(compiled, "__file__", None) if native.AVAILABLE else "not in use (Python fallback)",
    )


async def _ensure_topics(settings: WorkerSettings) -> int:
    """Create the span topic (and the dead-letter topic) if missing; the span topic's partitions."""
    partitions = await ensure_topic(
        settings.bootstrap_servers, settings.topic, settings.partitions, settings.replication_factor
    )
    if settings.dead_letter_topic:
        await ensure_topic(
            settings.bootstrap_servers, settings.dead_letter_topic, partitions, settings.replication_factor
        )
    return partitions


def run_worker(settings: WorkerSettings, config: Config, verbose: bool = False) -> NoReturn:
    """Run the worker until Faust stops, then end the process with its exit code.

    Raises ``KafkaUnreachable`` (before anything started) when no broker answers.
    """
    import faust

    from tokentrace.processors.worker import build_app

    settings.partitions = asyncio.run(_ensure_topics(settings))
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
