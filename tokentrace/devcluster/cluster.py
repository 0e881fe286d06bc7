"""The dev cluster's plan and start-up: Redis and Kafka, then the workers, then the API replicas, then demo traffic.

``DevCluster.start(supervisor)`` starts each server under the supervisor before waiting for it, so a
signal or a failure at any point stops exactly what was started. Workers and APIs run as
``python -m tokentrace worker|api`` with this interpreter, each with ``TMPDIR`` inside the run dir (the
workers keep their table files there), and log to ``<run dir>/logs``. Ports: the defaults (9092 Kafka,
6379 Redis, 9095 API and up) when free, else free ones (``notes`` says which); a port the user gave
must be free.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tokentrace.config import KafkaConfig
from tokentrace.devcluster.kafka import KafkaCluster, find_java, is_cached
from tokentrace.devcluster.ports import DEFAULT_API_PORT, DEFAULT_KAFKA_PORT, DEFAULT_REDIS_PORT
from tokentrace.devcluster.procs import DevClusterError, ServerProcess, find_tool, free_ports, port_free, wait_for
from tokentrace.devcluster.redis import RedisServer, find_redis_server
from tokentrace.devcluster.supervisor import Supervisor

__all__ = ["DEFAULT_API_PORT", "DEFAULT_KAFKA_PORT", "DEFAULT_REDIS_PORT", "DevCluster", "missing_tools"]


def missing_tools() -> list[str]:
    """One line per tool the dev cluster needs and cannot find, each naming the package that installs it.

    Maven is needed only while the Kafka jars are not cached.
    """
    checks: list[Callable[[], object]] = [find_java, find_redis_server]
    if not is_cached():
        checks.append(partial(find_tool, "mvn", "maven"))
    problems = []
    for check in checks:
        try:
            check()
        except DevClusterError as exc:
            problems.append(str(exc))
    return problems


def pick_ports(given: int | None, default: int, count: int, what: str) -> tuple[list[int], str | None]:
    """``count`` consecutive ports from ``given`` (they must be free) or ``default`` (else free ones); 0: free ones.

    Returns the ports and, when the defaults were taken, a note saying so.
    """
    if given == 0:
        return free_ports(count), None
    base = given if given is not None else default
    wanted = [base + i for i in range(count)]
    busy = [p for p in wanted if not port_free(p)]
    if not busy:
        return wanted, None
    if given is not None:
        raise DevClusterError(f"{what} port {busy[0]} on 127.0.0.1 is in use: stop what listens there or pick another")
    ports = free_ports(count)
    return ports, f"port {busy[0]} is taken; {what} uses {', '.join(map(str, ports))} instead"


def _answers(url: str, token: str | None = None) -> bool:
    """Whether ``url`` answers 200 (with the bearer token, if the API wants one)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2.0) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def _tokentrace(*args: str) -> list[str]:
    """The argv of a ``tokentrace`` subcommand run with this interpreter."""
    return [sys.executable, "-m", "tokentrace", *args]


@dataclass
class DevCluster:
    """What to run; ``start()`` fills in the addresses, pids and notes."""

    workers: int = 2
    apis: int = 1
    demo_rate: float | None = None
    kafka_port: int | None = None
    redis_port: int | None = None
    api_port: int | None = None
    partitions: int = KafkaConfig().partitions
    data_dir: Path | None = None
    config_path: Path | None = None
    api_token: str | None = None
    say: Callable[[str], None] = print

    run_dir: Path = field(init=False)
    bootstrap: str = field(init=False, default="")
    redis_url: str = field(init=False, default="")
    api_urls: list[str] = field(init=False, default_factory=list)
    pids: list[tuple[str, int]] = field(init=False, default_factory=list)
    notes: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            self.run_dir = self.data_dir.resolve()
        else:
            self.run_dir = Path(tempfile.mkdtemp(prefix="tokentrace-dev-"))

    @property
    def logs(self) -> Path:
        """Where each child's stdout and stderr go (``worker-1.log``, ``api-1.log``, ...)."""
        return self.run_dir / "logs"

    def start(self, supervisor: Supervisor) -> None:
        """Start everything under ``supervisor`` and wait until every API replica answers ``/health``."""
        kafka_port, redis_port, api_ports = self._ports()
        supervisor.tier("storage")
        redis = RedisServer(port=redis_port, data_dir=self.run_dir / "redis" if self.data_dir else None)
        supervisor.add(redis)
        redis.start()
        self.redis_url = redis.url
        self.pids.append(("redis", redis.process.pid or 0))
        self.say("starting Kafka (KRaft, one node) ...")
        kafka = KafkaCluster(
            1,
            port=kafka_port,
            data_dir=self.run_dir / "kafka" if self.data_dir else None,
            progress=self.say,
            startup_timeout=180.0,
        )
        supervisor.add(kafka)
        kafka.start()
        self.bootstrap = kafka.bootstrap
        self.pids.append(("kafka", kafka.nodes[0].process.pid or 0))

        common = ["--bootstrap-servers", self.bootstrap, "--redis-url", self.redis_url]
        common += ["--partitions", str(self.partitions), "--replication-factor", "1"]
        if self.config_path is not None:
            common += ["--config", str(self.config_path)]
        supervisor.tier("workers")
        servers = [self._child(supervisor, f"worker-{i + 1}", "worker", *common) for i in range(self.workers)]
        supervisor.tier("api")
        self.api_urls = [f"http://127.0.0.1:{port}" for port in api_ports]
        for i, port in enumerate(api_ports):
            servers.append(self._child(supervisor, f"api-{i + 1}", "api", *common, "--addr", f"127.0.0.1:{port}"))
        for url in self.api_urls:
            ready = partial(_answers, f"{url}/health", self.api_token)
            wait_for(ready, timeout=120.0, what=f"{url}/health", procs=servers)
        if self.demo_rate is not None:
            supervisor.tier("demo")
            demo = ["--url", self.api_urls[0], "--rate", f"{self.demo_rate:g}"]
            token = {"TOKENTRACE_API_TOKEN": self.api_token} if self.api_token else {}
            self._child(supervisor, "demo", "demo", *demo, env=token)

    def cleanup(self) -> None:
        """Delete the run dir, or only its scratch space when it is a kept ``data_dir``."""
        if self.data_dir is None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.run_dir / "tmp", ignore_errors=True)

    def _ports(self) -> tuple[int, int, list[int]]:
        picked = []
        for given, default, count, what in (
            (self.kafka_port, DEFAULT_KAFKA_PORT, 1, "Kafka"),
            (self.redis_port, DEFAULT_REDIS_PORT, 1, "Redis"),
            (self.api_port, DEFAULT_API_PORT, self.apis, "the API"),
        ):
            ports, note = pick_ports(given, default, count, what)
            if note:
                self.notes.append(note)
                self.say(note)
            picked.append(ports)
        return picked[0][0], picked[1][0], picked[2]

    def _child(
        self, supervisor: Supervisor, name: str, *args: str, env: Mapping[str, str] | None = None
    ) -> ServerProcess:
        scratch = self.run_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(scratch), **(env or {})}
        proc = ServerProcess(name, _tokentrace(*args), self.logs / f"{name}.log", env=env)
        supervisor.add(proc)
        proc.start()
        self.pids.append((name.rsplit("-", 1)[0], proc.pid or 0))
        return proc

    def banner(self, took: float) -> list[str]:
        """What the command prints once everything answers."""
        first = self.api_urls[0]
        lines = [
            f"tokentrace dev cluster ready in {took:.1f}s; Ctrl-C stops everything",
            f"  API:       {', '.join(self.api_urls)}",
            f"             try: curl '{first}/metrics?window=1h'  ·  {first}/health  ·  tokentrace demo --url {first}",
            f"  Kafka:     {self.bootstrap}  (bootstrap servers)",
            f"  Redis:     {self.redis_url}",
            f"  workers:   {self.workers}; span topic partitions: {self.partitions}",
        ]
        if self.demo_rate is not None:
            lines.append(f"  demo:      ~{self.demo_rate:g} spans/s into {first}")
        if self.data_dir is not None:
            lines.append(f"  data:      {self.run_dir} (kept; logs in {self.logs})")
        else:
            lines.append(f"  logs:      {self.logs} (deleted on exit)")
        lines.append("  pids:      " + ", ".join(f"{name} {pid}" for name, pid in self.pids))
        return lines
