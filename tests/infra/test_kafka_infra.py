"""The Kafka test infrastructure against real brokers: one broker, a 3-node cluster with a killed node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.infra.kafka import KafkaCluster, cache_dir, fetch, kafka_version
from tests.infra.procs import InfraError, free_ports, pid_alive

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]


async def _consume(bootstrap: str, topic: str, count: int, wait_s: float = 30.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + wait_s
        while len(values) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return values


def test_fetch_is_cached_and_pinned() -> None:
    began = time.monotonic()
    libs = fetch()
    assert time.monotonic() - began < 2.0, "a complete cache must not run mvn again"
    assert (libs / f"kafka_2.13-{kafka_version()}.jar").is_file()
    assert any(p.name.startswith("slf4j-reload4j") for p in libs.glob("*.jar"))
    assert (cache_dir() / ".complete").is_file()
    assert kafka_version().startswith("3.9.")


def test_fetch_without_maven_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENTRACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InfraError, match="mvn"):
        fetch()


async def test_single_broker_produces_and_consumes(kafka_broker: KafkaCluster) -> None:
    assert kafka_broker.bootstrap.startswith("127.0.0.1:")
    topic = kafka_broker.create_topic("infra", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"same-key")
    finally:
        await producer.stop()
    assert await _consume(kafka_broker.bootstrap, topic, 5) == [f"m{i}".encode() for i in range(5)]


async def test_topics_are_unique_and_never_auto_created(kafka_broker: KafkaCluster) -> None:
    first, second = kafka_broker.create_topic("same"), kafka_broker.create_topic("same")
    assert first != second
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=2000)
    await producer.start()
    try:
        with pytest.raises(KafkaError):
            await producer.send_and_wait(f"{first}-missing", b"x")
    finally:
        await producer.stop()


@pytest.mark.slow
async def test_cluster_keeps_accepting_acks_all_writes_with_a_killed_leader(kafka_cluster: KafkaCluster) -> None:
    cluster = kafka_cluster
    topic = cluster.create_topic("fault", config={"min.insync.replicas": "2"})
    strict = cluster.create_topic("strict", config={"min.insync.replicas": "3"})
    assert [len(p["isr"]) for p in cluster.partitions(topic)] == [3]
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=30_000
    )
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"before-{i}".encode())
        leader = cluster.partitions(topic)[0]["leader"]
        pid = cluster.node(leader).process.pid
        assert pid is not None
        cluster.kill(leader)
        assert not pid_alive(pid)
        for i in range(10):
            await producer.send_and_wait(topic, f"after-{i}".encode())
        cluster.wait_isr(topic, 2)
        cluster.wait_isr(strict, 2)
        assert cluster.partitions(topic)[0]["leader"] not in (leader, -1)
        # The control: with min.insync.replicas=3 the same acks=all write must now be refused.
        strict_producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", request_timeout_ms=3000)
        await strict_producer.start()
        try:
            with pytest.raises(KafkaError):
                await strict_producer.send_and_wait(strict, b"needs-three")
        finally:
            await strict_producer.stop()
    finally:
        await producer.stop()

    cluster.restart(leader)
    cluster.wait_isr(topic, 3)
    expected = [f"before-{i}".encode() for i in range(10)] + [f"after-{i}".encode() for i in range(10)]
    assert await _consume(cluster.bootstrap, topic, 20) == expected

    pids = [node.process.pid for node in cluster.nodes]
    base_dir = cluster.base_dir
    cluster.stop()
    assert not any(pid_alive(pid) for pid in pids if pid is not None)
    assert base_dir is not None and not base_dir.exists()


@pytest.mark.slow
def test_cli_start_prints_the_bootstrap_and_stops_on_sigint() -> None:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.infra.kafka", "start", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        bootstrap = proc.stdout.readline().strip()
        assert "ready" in banner, banner + (proc.stderr.read() if proc.stderr else "")
        assert bootstrap == f"127.0.0.1:{port}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_broker_that_cannot_start_fails_with_its_log() -> None:
    cluster = KafkaCluster(1, config={"num.partitions": "not-a-number"}, startup_timeout=60)
    with pytest.raises(InfraError, match=r"failed|exited with code") as info:
        cluster.start()
    assert "num.partitions" in str(info.value)
    assert cluster.base_dir is None


def test_a_cluster_id_starting_with_a_dash_formats_and_starts() -> None:
    """base64url ids start with '-' one time in 64; the storage tool once took that for a flag."""
    cluster = KafkaCluster(1)
    cluster.cluster_id = "-" + cluster.cluster_id[1:]
    with cluster:
        assert cluster.bootstrap.startswith("127.0.0.1:")
