"""GET /health, authentication, the error envelope on unknown routes."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient
from tests.api.server_process import ServerProcess
from tests.api.stores.faulty_fs import FullDisk
from tests.api.test_openapi import assert_conforms
from tokentrace.api.context import CONTEXT


async def test_health_body(client: TestClient[Any, Any]) -> None:
    await client.post("/spans", json={"model": "m", "prompt_tokens": 1})
    response = await client.get("/health")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok" and body["span_count"] == 1
    assert set(body) == {"status", "version", "uptime_s", "span_count", "transport", "queue_depth"}


async def test_unknown_route_uses_the_envelope(client: TestClient[Any, Any]) -> None:
    response = await client.get("/nothing-here")
    assert response.status == 404
    assert "error" in await response.json()
    response = await client.delete("/spans")
    assert response.status == 405
    assert "error" in await response.json()


async def test_bearer_token_required_everywhere(make_client: MakeClient, monkeypatch: Any) -> None:
    monkeypatch.setenv("TT_TEST_TOKEN", "s3cret")
    client = await make_client('http_server:\n  auth_token: "${TT_TEST_TOKEN}"\n')
    for method, path in (("GET", "/health"), ("GET", "/metrics"), ("POST", "/spans"), ("GET", "/metrics/prometheus")):
        response = await client.request(method, path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in (await response.json())["error"]
    wrong = await client.get("/health", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = await client.get("/health", headers={"Authorization": "Bearer s3cret"})
    assert right.status == 200


def test_unset_token_variable_stops_the_server(tmp_path: Path) -> None:
    """A real ``tokentrace serve`` with ``auth_token: "${VAR}"`` and VAR unset exits naming VAR; it never
    serves without a token."""
    config = tmp_path / "tokentrace.yml"
    config.write_text('http_server:\n  auth_token: "${TT_UNSET_TOKEN}"\n')
    env = {k: v for k, v in os.environ.items() if k != "TT_UNSET_TOKEN"}
    command = [sys.executable, "-m", "tokentrace", "serve", "--addr", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")]
    done = subprocess.run([*command, "--config", str(config)], env=env, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"TT_UNSET_TOKEN" in done.stderr


def test_start_log_says_whether_auth_is_on(tmp_path: Path) -> None:
    config = tmp_path / "tokentrace.yml"
    config.write_text('http_server:\n  auth_token: "s3cret"\n')
    for with_token in (True, False):
        server = ServerProcess(tmp_path / f"d{with_token}", config if with_token else None, token="s3cret")
        try:
            server.start()
            if with_token:
                with pytest.raises(urllib.error.HTTPError) as raised:
                    urllib.request.urlopen(f"{server.url}/health", timeout=5)
                assert raised.value.code == 401
        finally:
            server.stop()
        log = server.log.read_text()
        assert ("auth: on" in log) == with_token and ("auth: off" in log) != with_token, log


async def test_health_is_503_when_the_disk_fails(make_client: MakeClient, tmp_path: Any) -> None:
    client = await make_client(data_dir=tmp_path / "d")
    wal = client.app[CONTEXT].store._wal  # type: ignore[attr-defined]
    wal.fs = FullDisk()
    response = await client.post("/spans", json={"model": "m", "prompt_tokens": 1})
    assert response.status == 503
    assert "not accepted" in (await response.json())["error"]
    health = await client.get("/health")
    assert health.status == 503
    body = await health.json()
    assert body["status"] == "unhealthy" and "resume" in body["error"]
    assert body["span_count"] == 0


async def test_health_is_degraded_while_damaged_files_are_in_quarantine(make_client: MakeClient, tmp_path: Any) -> None:
    data = tmp_path / "d"
    (data / "quarantine").mkdir(parents=True)
    (data / "quarantine" / "snapshot-000000000007.bin").write_bytes(b"damaged")
    client = await make_client(data_dir=data)
    health = await client.get("/health")
    assert health.status == 200, "a degraded server still serves: load balancers keep routing to it"
    body = await health.json()
    assert body["status"] == "degraded" and "snapshot-000000000007.bin" in body["reason"]
    assert_conforms("/health", "get", 200, body)
    assert (await client.post("/spans", json={"model": "m", "prompt_tokens": 1})).status == 202

    (data / "quarantine" / "snapshot-000000000007.bin").unlink()  # inspected and deleted: whole again
    body = await (await client.get("/health")).json()
    assert body["status"] == "ok" and "reason" not in body
    assert_conforms("/health", "get", 200, body)
