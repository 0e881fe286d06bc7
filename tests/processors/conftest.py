"""Fixtures for the distributed pipeline: a span topic, workers, a RedisStore, API clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer
from tests.processors.harness import Workers
from tokentrace.api.app import create_app
from tokentrace.api.distributed import distributed_context
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.config import Config, parse_config

MakeAPI = Callable[[], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def topic(kafka_broker: KafkaCluster) -> str:
    return kafka_broker.create_topic("spans", partitions=4)


@pytest.fixture
def workers(kafka_broker: KafkaCluster, redis_server: RedisServer, topic: str, tmp_path: Path) -> Iterator[Workers]:
    deployment = Workers(kafka_broker.bootstrap, redis_server.url, topic, tmp_path / "logs")
    yield deployment
    deployment.stop_all()


@pytest.fixture
async def store(kafka_broker: KafkaCluster, redis_server: RedisServer, topic: str) -> AsyncIterator[RedisStore]:
    opened = RedisStore(redis_server.url, kafka_broker.bootstrap, topic)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def config(kafka_broker: KafkaCluster, redis_server: RedisServer, topic: str) -> Config:
    return parse_config(
        f"kafka:\n  bootstrap_servers: '{kafka_broker.bootstrap}'\n  topic: '{topic}'\n  partitions: 4\n"
        f"redis:\n  url: '{redis_server.url}'\n"
    )


@pytest.fixture
async def make_api(aiohttp_client: Any, config: Config) -> AsyncIterator[MakeAPI]:
    """``await make_api()`` → a test client of a fresh ``tokentrace api`` replica (real HTTP)."""
    stores: list[RedisStore] = []

    async def make() -> TestClient[Any, Any]:
        ctx = await distributed_context(config)
        assert isinstance(ctx.store, RedisStore)
        stores.append(ctx.store)
        client: TestClient[Any, Any] = await aiohttp_client(create_app(ctx))
        return client

    yield make
    for opened in stores:
        await opened.close()
