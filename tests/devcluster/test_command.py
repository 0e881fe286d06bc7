"""``tokentrace dev-cluster`` end to end: real Kafka, Redis, workers and API replicas, then nothing left behind.

Uses the cached Kafka jars (scripts/install-test-deps fetches them); never downloads. Every child of the
command inherits an environment marker, so a process that escaped (reparented to init) is still found.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.devcluster.procfs import children, descendants, in_groups, living_after, marked
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.devcluster.kafka import is_cached
from tokentrace.devcluster.procs import free_ports

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
MARKER = "TOKENTRACE_DEVCLUSTER_TEST_RUN"


@dataclass
class Run:
    """One running ``tokentrace dev-cluster`` and what its banner said."""

    proc: subprocess.Popen[str]
    marker: str
    lines: queue.Queue[str | None]
    seen: list[str] = field(default_factory=list)

    def read_until(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        stderr = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(self.seen)}\n{stderr}")

    def stop(self, sig: signal.Signals, timeout: float = 90.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start(tmp_path: Path, *args: str) -> Run:
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokentrace", "dev-cluster", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", MARKER: marker},
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return Run(proc, marker, lines)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Started runs; any still up at the end is killed (with its process groups) so a failure leaks nothing."""
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            for pid in descendants(run.proc.pid):
                with_suppressed_kill(pid)
            run.proc.kill()
            run.proc.wait()
        for pid in marked(MARKER, run.marker):
            with_suppressed_kill(pid)


def with_suppressed_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status), json.loads(response.read())


def spans(count: int, seed: str) -> list[dict[str, Any]]:
    at = now_ms()
    return [
        {
            "trace_id": f"{seed}-{i // 5}",
            "model": "gpt-4o-mini",
            "provider": "openai",
            "prompt_tokens": 10 + i,
            "comp_tokens": 3,
            "latency_ms": 100 + i,
            "start_time": format_ms(at - 1000 - i),
            "status": "ok",
        }
        for i in range(count)
    ]


def wait_for_count(api: str, want: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, body = http("GET", f"{api}/metrics?window=1h")
        if body["span_count"] >= want:
            return body
        time.sleep(0.5)
    raise AssertionError(f"/metrics never reached {want} spans: {body}")


def test_needs_the_cached_jars() -> None:
    assert is_cached(), "the Kafka jars must be cached before the suite runs (scripts/install-test-deps)"


@pytest.mark.slow
def test_runs_the_whole_pipeline_and_leaves_nothing_on_sigterm(tmp_path: Path, runs: list[Run]) -> None:
    kafka_port, redis_port, api_port = free_ports(3)
    run = start(
        tmp_path,
        *("--workers", "2", "--apis", "2", "--kafka-port", str(kafka_port)),
        *("--redis-port", str(redis_port), "--api-port", str(api_port)),
    )
    runs.append(run)
    run.read_until(r"dev cluster ready", 240)
    apis = run.read_until(r"API:\s+(\S+), (\S+)", 5).groups()
    assert apis == (f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{api_port + 1}")
    assert run.read_until(r"Kafka:\s+(\S+)", 5).group(1) == f"127.0.0.1:{kafka_port}"
    assert run.read_until(r"Redis:\s+(\S+)", 5).group(1) == f"redis://127.0.0.1:{redis_port}/0"
    logs = Path(run.read_until(r"logs:\s+(\S+)", 5).group(1))
    assert logs.is_dir()
    scratch = logs.parent / "tmp"  # the workers' table files: inside the run dir, so they go with it
    deadline = time.monotonic() + 60
    while len(list(scratch.glob("tokentrace-worker-*"))) < 2:
        assert time.monotonic() < deadline, list(scratch.iterdir())
        time.sleep(0.2)
    named = {int(pid) for pid in re.findall(r"\d+", run.read_until(r"pids:\s+(.*)", 5).group(1))}
    # Kafka, Redis, two workers, two APIs: each a direct child, and nothing else is.
    assert len(named) == 6
    assert children(run.proc.pid) == named
    below = descendants(run.proc.pid)
    # Each child leads its own process group; the marker finds what left the tree.
    assert in_groups(named) == below
    assert below - marked(MARKER, run.marker) <= {pid for pid in named if "redis" in cmdline(pid)}

    sent = spans(40, run.marker)
    assert http("POST", f"{apis[0]}/spans", sent[:25]) == (202, {"accepted": 25})
    assert http("POST", f"{apis[1]}/spans", sent[25:]) == (202, {"accepted": 15})
    for api in apis:
        body = wait_for_count(api, len(sent))
        assert body["span_count"] == len(sent)
        assert body["tokens"]["prompt_total"] == sum(s["prompt_tokens"] for s in sent)
    status, health = http("GET", f"{apis[0]}/health")
    assert status == 200 and health["transport"] == "kafka"

    assert run.stop(signal.SIGTERM) == 0
    assert living_after(below) == set()
    assert marked(MARKER, run.marker) == set()
    assert in_groups(named) == set()
    assert not logs.exists(), "the temp run dir must go with the cluster"


@pytest.mark.slow
def test_data_dir_keeps_the_view_and_the_log_across_runs_and_sigint_stops_it(tmp_path: Path, runs: list[Run]) -> None:
    data = tmp_path / "data"
    kafka_port, redis_port, api_port = free_ports(3)
    args = ["--workers", "1", "--data-dir", str(data), "--kafka-port", str(kafka_port)]
    args += ["--redis-port", str(redis_port), "--api-port", str(api_port)]
    api = f"http://127.0.0.1:{api_port}"
    sent = spans(30, uuid.uuid4().hex)

    first = start(tmp_path, *args)
    runs.append(first)
    first.read_until(r"dev cluster ready", 240)
    first_below = descendants(first.proc.pid)
    assert http("POST", f"{api}/spans", sent) == (202, {"accepted": 30})
    wait_for_count(api, 30)
    assert first.stop(signal.SIGINT) == 0
    assert living_after(first_below) == set() and marked(MARKER, first.marker) == set()
    assert (data / "kafka").is_dir() and (data / "redis").is_dir() and (data / "logs").is_dir()

    second = start(tmp_path, *args)
    runs.append(second)
    second.read_until(r"dev cluster ready", 240)
    _, body = http("GET", f"{api}/metrics?window=1h")
    assert body["span_count"] == 30, "the view came back from the kept Redis data"
    more = spans(5, uuid.uuid4().hex)
    assert http("POST", f"{api}/spans", more) == (202, {"accepted": 5})
    # Once in ~10 full-suite runs the restarted worker fetched nothing here until its stall watchdog sought the
    # partition again (processors/worker.py STALL_S): counted within the wait, never lost.
    assert wait_for_count(api, 35)["span_count"] == 35
    second_below = descendants(second.proc.pid)
    assert second.stop(signal.SIGTERM) == 0
    assert living_after(second_below) == set() and marked(MARKER, second.marker) == set()


def test_missing_tools_are_named_with_their_packages(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env |= {"PATH": str(tmp_path), "TOKENTRACE_CACHE": str(tmp_path / "empty-cache")}
    done = subprocess.run(
        [sys.executable, "-m", "tokentrace", "dev-cluster"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1
    assert "`java`" in done.stderr and "default-jre-headless" in done.stderr
    assert "`redis-server`" in done.stderr and "package `redis-server`" in done.stderr
    assert "`mvn`" in done.stderr and "package `maven`" in done.stderr
    assert not (tmp_path / "empty-cache").exists(), "nothing may be fetched before the checks pass"


def test_maven_is_not_required_once_the_jars_are_cached(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"} | {"PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "tokentrace", "dev-cluster"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1 and "`java`" in done.stderr
    assert "mvn" not in done.stderr


def test_a_busy_port_given_on_the_command_line_is_an_error(tmp_path: Path, runs: list[Run]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = start(tmp_path, "--api-port", str(port), "--kafka-port", str(free_ports(1)[0]))
        runs.append(run)
        assert run.proc.wait(60) == 1
        assert run.proc.stderr is not None
        assert f"port {port}" in run.proc.stderr.read()
    assert marked(MARKER, run.marker) == set()


def ready_run(tmp_path: Path, runs: list[Run], *args: str) -> tuple[Run, dict[str, int]]:
    """A started one-worker cluster on free ports, and its banner's pids by name (``worker``, ``api``, ...)."""
    kafka_port, redis_port, api_port = free_ports(3)
    run = start(
        tmp_path,
        *("--workers", "1", "--kafka-port", str(kafka_port), "--redis-port", str(redis_port)),
        *("--api-port", str(api_port), *args),
    )
    runs.append(run)
    run.read_until(r"dev cluster ready", 240)
    pids = dict(re.findall(r"(\w+) (\d+)", run.read_until(r"pids:\s+(.*)", 10).group(1)))
    return run, {name: int(pid) for name, pid in pids.items()}


@pytest.mark.slow
def test_a_crashed_worker_stops_the_cluster_with_its_log(tmp_path: Path, runs: list[Run]) -> None:
    run, pids = ready_run(tmp_path, runs, "--demo", "--demo-rate", "50")
    assert set(pids) == {"kafka", "redis", "worker", "api", "demo"}
    below = descendants(run.proc.pid)
    os.kill(pids["worker"], signal.SIGKILL)
    assert run.proc.wait(90) == 1
    assert run.proc.stderr is not None
    stderr = run.proc.stderr.read()
    assert "worker-1 exited with code -9" in stderr, stderr
    assert living_after(below) == set() and in_groups(set(pids.values())) == set()
    assert marked(MARKER, run.marker) == set()
    logs = next(re.search(r"logs:\s+(\S+)", line) for line in run.seen if "logs:" in line)
    assert logs is not None
    assert not Path(logs.group(1)).parent.exists(), "a crash still deletes the temp run dir"


@pytest.mark.slow
def test_a_killed_command_takes_its_children_with_it(tmp_path: Path, runs: list[Run]) -> None:
    """SIGKILL leaves no time to clean up: the children's parent-death signal must do it."""
    run, pids = ready_run(tmp_path, runs)
    below = descendants(run.proc.pid)
    run.proc.kill()
    run.proc.wait(10)
    assert living_after(below, within=10) == set() and in_groups(set(pids.values())) == set()
    assert marked(MARKER, run.marker) == set()
    logs = next(re.search(r"logs:\s+(\S+)", line) for line in run.seen if "logs:" in line)
    assert logs is not None
    shutil.rmtree(Path(logs.group(1)).parent)  # the one thing a SIGKILLed command cannot delete


@pytest.mark.slow
def test_sigterm_during_start_up_stops_what_had_started(tmp_path: Path, runs: list[Run]) -> None:
    kafka_port, redis_port, api_port = free_ports(3)
    run = start(
        tmp_path,
        *("--workers", "1", "--kafka-port", str(kafka_port), "--redis-port", str(redis_port)),
        *("--api-port", str(api_port)),
    )
    runs.append(run)
    run.read_until(r"starting Kafka", 60)
    deadline = time.monotonic() + 30
    while not any("java" in cmdline(pid) for pid in children(run.proc.pid)):  # the broker's JVM is up
        assert time.monotonic() < deadline
        time.sleep(0.05)
    below = descendants(run.proc.pid)
    assert len(below) >= 2  # redis-server and the JVM (maybe still the storage formatter)
    assert run.stop(signal.SIGTERM, timeout=60) == 0
    assert "SIGTERM: stopping the dev cluster" in "".join(run.seen) + "".join(iter_rest(run))
    assert living_after(below) == set() and in_groups(below) == set()
    assert marked(MARKER, run.marker) == set()


def iter_rest(run: Run) -> Iterator[str]:
    """The lines the command printed that nobody has read yet (after it exited)."""
    while (line := run.lines.get(timeout=5)) is not None:
        yield line


@pytest.mark.slow
def test_a_config_with_a_token_protects_the_apis_and_the_demo_uses_it(tmp_path: Path, runs: list[Run]) -> None:
    token = uuid.uuid4().hex
    config = tmp_path / "tokentrace.yml"
    config.write_text(f"http_server:\n  auth_token: {token}\n")
    run, _ = ready_run(tmp_path, runs, "--demo", "--demo-rate", "50", "-c", str(config))
    api = next(found.group(1) for line in run.seen if (found := re.search(r"API:\s+(\S+)", line)))
    assert any(f"demo:      ~50 spans/s into {api}" in line for line in run.seen)
    with pytest.raises(urllib.error.HTTPError) as refused:
        http("GET", f"{api}/metrics?window=1h")
    assert refused.value.code == 401
    deadline = time.monotonic() + 60
    counted = 0
    while counted == 0 and time.monotonic() < deadline:
        request = urllib.request.Request(f"{api}/metrics?window=1h", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            counted = json.loads(response.read())["span_count"]
        time.sleep(0.5)
    assert counted > 0, "the demo traffic, sent with the token, was counted"
    below = descendants(run.proc.pid)
    assert run.stop(signal.SIGTERM) == 0
    assert living_after(below) == set() and marked(MARKER, run.marker) == set()


def test_a_bad_config_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "tokentrace.yml"
    config.write_text("no_such_key: 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "tokentrace", "dev-cluster", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "no_such_key" in done.stderr, done.stderr
