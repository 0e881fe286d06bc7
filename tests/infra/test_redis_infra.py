"""The redis-server test infrastructure against the real server."""

from __future__ import annotations

import pytest

from tests.infra.procs import pid_alive
from tests.infra.redis import RedisServer

pytestmark = pytest.mark.redis


def test_set_and_get(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis_server.client(decode_responses=True) as client:
        assert client.set("k", "v")
        assert client.get("k") == "v"
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}


def test_each_test_gets_a_fresh_server(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        assert client.dbsize() == 0


def test_kill_and_restart_without_persistence_starts_empty(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        client.set("k", "v")
    pid = redis_server.process.pid
    assert pid is not None
    redis_server.kill()
    assert not pid_alive(pid)
    redis_server.restart()
    assert redis_server.process.pid != pid
    with redis_server.client() as client:
        assert client.get("k") is None
        client.set("k", "again")
        assert client.get("k") == b"again"


def test_persistent_server_keeps_data_across_a_kill() -> None:
    with RedisServer(persistence=True) as server:
        with server.client() as client:
            client.set("k", "v")
            client.hset("h", mapping={"a": "1"})
        server.kill()
        server.restart()
        with server.client() as client:
            assert client.get("k") == b"v"
            assert client.hgetall("h") == {b"a": b"1"}
        pid = server.process.pid
        directory = server.dir
    assert pid is not None and not pid_alive(pid)
    assert directory is not None and not directory.exists()


def test_graceful_shutdown_and_restart_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.shutdown()
    assert not redis_server.process.running
    redis_server.restart()
    assert redis_server.port == port
    with redis_server.client() as client:
        assert client.ping()
