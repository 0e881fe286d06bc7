"""An embedded server over a temporary data dir, reached through aiohttp's test client (real HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tokentrace.alerting.service import AlertService
from tokentrace.api.app import create_app
from tokentrace.api.context import ServerContext
from tokentrace.api.embedded import alert_service, embedded_settings, price_table
from tokentrace.api.stores.embedded import EmbeddedStore
from tokentrace.config import Config, parse_config

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[MakeClient]:
    """``await make_client(yaml_text="...", data_dir=...)`` → a test client of a fresh embedded server."""
    stores: list[EmbeddedStore] = []
    services: list[AlertService] = []

    async def make(yaml_text: str = "", data_dir: Path | None = None) -> TestClient[Any, Any]:
        config: Config = parse_config(yaml_text)
        store = EmbeddedStore(data_dir or tmp_path / "data", embedded_settings(config))
        await store.open()
        stores.append(store)
        alerts = alert_service(config, store, "http://localhost:9090")
        await alerts.start()
        services.append(alerts)
        ctx = ServerContext(store=store, config=config, pricer=price_table(config), alerts=alerts)
        client: TestClient[Any, Any] = await aiohttp_client(create_app(ctx))
        return client

    yield make
    for service in services:
        await service.aclose()
    for store in stores:
        await store.close()


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    return await make_client()
