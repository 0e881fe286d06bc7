"""Pytest fixtures for real servers (loaded by tests/conftest.py as a plugin).

* ``kafka_broker`` (session): one single-node KRaft broker for the whole run. ``.bootstrap`` is
  ``"127.0.0.1:PORT"``; ``.create_topic(prefix, partitions=, config=)`` makes a uniquely named topic
  (auto-creation is off), so tests never see each other's data.
* ``kafka_cluster`` (function): a fresh 3-node KRaft cluster (all voters) for fault tests:
  ``.bootstrap``, ``.create_topic`` (replication 3 by default), ``.kill(id)``, ``.stop_node(id)``,
  ``.restart(id)``, ``.partitions(topic)``, ``.wait_isr(topic, n)``; node ids are 1..3.
* ``redis_server`` (function): a fresh ``redis-server`` per test, no persistence; ``.url``,
  ``.port``, ``.client()``, ``.kill()``, ``.shutdown()``, ``.restart()``. Use ``RedisServer(
  persistence=True)`` from ``tests.infra.redis`` directly for data that must survive a restart.

Nothing is skipped: a missing java, mvn, jar cache or redis-server makes the fixture fail with an
error that says what to install (``scripts/install-test-deps`` installs all of it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer

__all__ = ["kafka_broker", "kafka_cluster", "redis_server"]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaCluster]:
    """One single-node Kafka broker shared by the whole test session."""
    with KafkaCluster(1) as broker:
        yield broker


@pytest.fixture
def kafka_cluster() -> Iterator[KafkaCluster]:
    """A fresh 3-node KRaft cluster for one test (it may kill and restart nodes)."""
    cluster = KafkaCluster(3).start()
    try:
        yield cluster
    finally:
        # The KRaft leader waits 5 s for absent voters on SIGTERM; the data is thrown away anyway.
        cluster.stop(timeout=3.0)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty, non-persistent redis-server for one test (starts in well under a second)."""
    with RedisServer() as server:
        yield server
