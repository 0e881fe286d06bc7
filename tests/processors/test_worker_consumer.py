"""The worker's fetch settings reach the Kafka consumer Faust creates (Faust has no setting for the wait)."""

from __future__ import annotations

import asyncio

from tokentrace.processors.worker import WorkerSettings, build_app


async def test_fetch_size_wait_and_buffer_reach_fausts_consumer() -> None:
    settings = WorkerSettings(
        bootstrap_servers="127.0.0.1:1",
        redis_url="redis://127.0.0.1:1/0",
        fetch_wait_ms=70,
        fetch_partition_bytes=3 << 20,
    )
    app = build_app(settings)
    consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
    try:
        assert consumer._fetch_max_wait_ms == 70  # Faust alone would pass 1500
        assert consumer._max_partition_fetch_bytes == 3 << 20
        assert app.conf.stream_buffer_maxsize == settings.stream_buffer
    finally:
        await consumer.stop()


async def test_defaults_do_not_wait_long_for_idle_partitions() -> None:
    app = build_app(WorkerSettings(bootstrap_servers="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0"))
    consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
    try:
        assert consumer._fetch_max_wait_ms == 100
        assert consumer._max_partition_fetch_bytes == 8 << 20
    finally:
        await consumer.stop()
