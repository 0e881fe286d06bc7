"""The broker launcher's own behaviour: the Maven fetch and its progress lines, ports, a kept data dir."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.devcluster.procfs import descendants, living_after
from tokentrace.devcluster.kafka import KafkaCluster, fetch, is_cached, kafka_version
from tokentrace.devcluster.procs import DevClusterError, free_ports, pid_alive

# Stands in for Maven: writes the main jar where -Dkafka.libs= points, as `dependency:copy-dependencies` would.
FAKE_MVN = """#!/bin/sh
for arg in "$@"; do
  case "$arg" in -Dkafka.libs=*) libs="${arg#-Dkafka.libs=}" ;; esac
done
mkdir -p "$libs" && echo jar > "$libs/kafka_2.13-VERSION.jar" && echo ran >> "$(dirname "$0")/calls"
"""


def test_first_fetch_prints_progress_and_later_ones_are_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(FAKE_MVN.replace("VERSION", kafka_version()))
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TOKENTRACE_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    assert not is_cached()
    libs = fetch(progress=lines.append)
    assert (libs / f"kafka_2.13-{kafka_version()}.jar").is_file() and is_cached()
    assert len(lines) == 2
    assert lines[0].startswith(f"fetching the Kafka {kafka_version()} jars with Maven into {tmp_path / 'cache'}")
    assert lines[1].startswith("fetched 1 jars in ")
    assert fetch(progress=lines.append) == libs
    assert len(lines) == 2 and (bin_dir / "calls").read_text() == "ran\n"


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cluster = KafkaCluster(1, port=port, data_dir=tmp_path / "kafka")
        with pytest.raises(DevClusterError, match=f"port {port} on 127.0.0.1 is in use"):
            cluster.start()
    assert cluster.nodes == [] or not any(node.running for node in cluster.nodes)


@pytest.mark.kafka
def test_a_kept_data_dir_is_formatted_once_and_keeps_its_cluster_id(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    data = tmp_path / "kafka"
    with KafkaCluster(1, port=port, data_dir=data) as first:
        assert first.bootstrap == f"127.0.0.1:{port}"
        cluster_id = first.cluster_id
        pid = first.nodes[0].process.pid
    assert pid is not None and not pid_alive(pid)
    meta = data / "node-1" / "data" / "meta.properties"
    assert f"cluster.id={cluster_id}" in meta.read_text()
    with KafkaCluster(1, port=port, data_dir=data) as second:
        assert second.cluster_id == cluster_id
        assert (data / "node-1" / "format.log").read_text().count("starting") == 1, "formatted once"
    assert meta.is_file(), "a kept data dir survives stop()"


@pytest.mark.kafka
def test_the_broker_command_serves_on_the_port_given_and_stops_on_sigterm(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokentrace.devcluster.kafka", "--port", str(port), "--data-dir", str(tmp_path / "k")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "ready" in banner and str(tmp_path / "k") in banner, banner
        assert proc.stdout.readline().strip() == f"127.0.0.1:{port}"
        jvms = descendants(proc.pid)
        assert len(jvms) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert living_after(jvms) == set()
        assert (tmp_path / "k" / "node-1" / "data" / "meta.properties").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
