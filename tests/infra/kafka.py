"""Real Apache Kafka for tests: fetch the broker jars with Maven, run KRaft brokers on loopback.

``fetch()`` runs ``mvn dependency:copy-dependencies`` on ``kafka-pom.xml`` (which pins the version) into
``$TOKENTRACE_CACHE/kafka-<version>`` (default ``~/.cache/tokentrace``); a marker file makes later
calls free. ``KafkaCluster(size=1)`` is one combined controller+broker node, ``size=3`` three combined
nodes that are all KRaft voters (for fault tests: ``kill``, ``stop_node``, ``restart``). Each node has a
512 MB heap, serial GC, small segments and free ports below the ephemeral range; data lives in a temp
dir removed by ``stop()``. From a shell::

    python -m tests.infra.kafka fetch            # download the jars (scripts/install-test-deps does this)
    python -m tests.infra.kafka start [-n 3]     # run a broker (or cluster) in the foreground
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.infra.procs import InfraError, ServerProcess, free_ports, port_accepts, serve_until_signalled, wait_for

__all__ = ["KafkaCluster", "KafkaNode", "cache_dir", "class_archive", "fetch", "kafka_version", "libs_dir", "prepare"]

POM = Path(__file__).with_name("kafka-pom.xml")
_MARKER = ".complete"
_T = TypeVar("_T")

_JVM_OPTS = [
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:ReservedCodeCacheSize=64m",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]

_LOG4J = """\
log4j.rootLogger={level}, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
log4j.logger.kafka.server.ControllerServer=INFO
"""


def kafka_version() -> str:
    """The Kafka version pinned in kafka-pom.xml."""
    node = ET.parse(POM).getroot().find("properties/kafka.version")
    if node is None or not node.text:
        raise InfraError(f"{POM} has no <kafka.version> property")
    return node.text.strip()


def cache_dir() -> Path:
    """Where the jars of this Kafka version are cached."""
    base = os.environ.get("TOKENTRACE_CACHE") or str(Path.home() / ".cache" / "tokentrace")
    return Path(base) / f"kafka-{kafka_version()}"


def libs_dir() -> Path:
    """The folder holding the broker's jars (complete only after ``fetch()``)."""
    return cache_dir() / "libs"


def fetch(*, force: bool = False) -> Path:
    """Download the broker jars with Maven unless the cache is already complete; returns ``libs_dir()``."""
    target = cache_dir()
    if (target / _MARKER).is_file() and not force:
        return libs_dir()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError(
            f"the Kafka jars are not cached in {target} and `mvn` is not on PATH: install Maven "
            "(Debian package `maven`) or run scripts/install-test-deps"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).is_file() and not force:
            return libs_dir()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _run_maven(mvn, staging / "libs")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        jars = sorted(p.name for p in libs_dir().glob("*.jar"))
        (target / _MARKER).write_text("\n".join(jars) + "\n")
    return libs_dir()


def _run_maven(mvn: str, out: Path) -> None:
    argv = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-Dkafka.libs={out}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    main_jar = out / f"kafka_2.13-{kafka_version()}.jar"
    if done.returncode != 0 or not main_jar.is_file():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise InfraError(f"fetching the Kafka jars failed ({' '.join(argv)} exit {done.returncode}):\n{tail}")


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise InfraError("no `java` found (JAVA_HOME or PATH): Kafka needs a JDK or JRE 11+, e.g. openjdk-17")
    return java


def class_archive(java: str) -> Path:
    """The AppCDS archive of the broker's classes for this JDK (it halves JVM start-up on 2 cores).

    Written by the first node of a cluster when it exits gracefully, if it is missing; a JVM that
    cannot use it (another JDK build, other jars) ignores it.
    """
    real = Path(java).resolve()
    tag = hashlib.sha1(f"{real}:{real.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / f"classes-{tag}.jsa"


def prepare() -> Path:
    """``fetch()`` plus the class archive (starts and stops one broker if it is missing)."""
    libs = fetch()
    if not class_archive(_java()).is_file():
        with KafkaCluster(1):
            pass
    return libs


def _run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion on a fresh loop in a worker thread (safe inside a running loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin_call(bootstrap: str, call: str, *args: Any) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        return await getattr(admin, call)(*args)
    finally:
        await admin.close()


def _broker_ids(address: str) -> set[int]:
    """The broker ids that ``address`` lists as live, or an empty set while it does not answer."""
    try:
        meta = _run_async(_admin_call(address, "describe_cluster"))
    except Exception:
        return set()
    return {int(b["node_id"]) for b in meta["brokers"]}


@dataclass
class KafkaNode:
    """One combined controller+broker JVM of a cluster."""

    node_id: int
    port: int
    controller_port: int
    home: Path
    process: ServerProcess

    @property
    def address(self) -> str:
        """The client listener, ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the JVM is up (it may still be starting)."""
        return self.process.running


class KafkaCluster:
    """A KRaft cluster of ``size`` combined nodes on loopback; ``size=1`` is a single broker.

    ``start()`` fetches the jars if needed, formats the storage and waits until every node serves
    metadata listing all of them. Use as a context manager or call ``stop()``.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        heap_mb: int = 512,
        startup_timeout: float = 120.0,
        config: Mapping[str, str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.heap_mb = heap_mb
        self.startup_timeout = startup_timeout
        self.extra_config = dict(config or {})
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes: list[KafkaNode] = []
        self.base_dir: Path | None = None
        self._topic_seq = 0
        self._archive: Path | None = None  # the class archive being written by node 1, if any
        self._lock = threading.Lock()

    @property
    def bootstrap(self) -> str:
        """All nodes' client addresses, comma-separated (what ``bootstrap_servers`` takes)."""
        return ",".join(node.address for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        """The node with this id (ids are 1..size)."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Create, format and start all nodes, then wait until they serve metadata."""
        libs = fetch()
        java = _java()
        self.base_dir = Path(tempfile.mkdtemp(prefix="tokentrace-kafka-"))
        try:
            self._create_nodes(java, libs)
            self._format(java, libs)
            for node in self.nodes:
                node.process.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every running node answers and lists every running node as a live broker."""
        want = {n.node_id for n in self.nodes if n.running}
        live = [n for n in self.nodes if n.running]

        def ready() -> bool:
            return all(port_accepts(n.port) and want <= _broker_ids(n.address) for n in live)

        wait_for(
            ready,
            timeout=timeout or self.startup_timeout,
            what=f"Kafka nodes {sorted(want)} to serve metadata",
            procs=[n.process for n in live],
            interval=0.25,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM all nodes, SIGKILL those still up after ``timeout`` s, and delete the data dir."""
        for node in self.nodes:
            node.process.terminate()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if not node.process.wait(max(0.0, deadline - time.monotonic())):
                node.process.kill()
        if self._archive is not None:
            written = Path(f"{self._archive}.{os.getpid()}.tmp")
            if written.is_file() and self.nodes[0].process.returncode in (0, 143):  # 143: exit on SIGTERM
                written.replace(self._archive)
            written.unlink(missing_ok=True)
            self._archive = None
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (no controlled shutdown: like a crashed machine)."""
        self.node(node_id).process.kill()

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        """Stop one node gracefully (SIGTERM, SIGKILL after ``timeout`` s)."""
        self.node(node_id).process.stop(timeout)

    def restart(self, node_id: int, timeout: float | None = None) -> None:
        """Start a stopped or killed node again on the same ports and data, and wait until it serves."""
        node = self.node(node_id)
        if node.running:
            raise InfraError(f"Kafka node {node_id} is still running; kill or stop it first")
        node.process.start()
        self.wait_ready(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- topics --------------------------------------------------------------------------------------

    def create_topic(
        self,
        prefix: str = "test",
        *,
        partitions: int = 1,
        replication: int | None = None,
        config: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Create a uniquely named topic and wait until all its partitions have a leader and full ISR.

        ``replication`` defaults to ``min(3, size)``; ``config`` holds topic configs such as
        ``{"min.insync.replicas": "2"}``. Returns the topic name.
        """
        with self._lock:
            self._topic_seq += 1
            name = f"{prefix}-{self._topic_seq}-{uuid.uuid4().hex[:8]}"
        rf = replication or min(3, self.size)
        new = NewTopic(name, partitions, rf, topic_configs=dict(config or {}))
        response = _run_async(_admin_call(self._live_bootstrap(), "create_topics", [new]))
        for topic_error in response.topic_errors:
            if topic_error[1] != 0:
                raise InfraError(f"creating topic {name} failed: {topic_error}")
        self.wait_isr(name, rf, timeout=timeout)
        return name

    def partitions(self, topic: str, via: KafkaNode | None = None) -> list[dict[str, Any]]:
        """The topic's partitions as metadata reports them (``partition``, ``leader``, ``replicas``, ``isr``).

        Asks ``via`` if given, else any running node; empty if the topic is unknown there.
        """
        address = via.address if via else self._live_bootstrap()
        topics = _run_async(_admin_call(address, "describe_topics", [topic]))
        if not topics or topics[0]["error_code"] != 0:
            return []
        return sorted(topics[0]["partitions"], key=lambda p: p["partition"])

    def wait_isr(self, topic: str, count: int, *, timeout: float = 30.0) -> None:
        """Wait until every running node reports, for every partition of ``topic``, a leader and exactly
        ``count`` in-sync replicas (each broker's metadata cache catches up on its own)."""

        def agrees(node: KafkaNode) -> bool:
            try:
                parts = self.partitions(topic, via=node)
            except Exception:
                return False
            return bool(parts) and all(p["leader"] >= 0 and len(p["isr"]) == count for p in parts)

        def ready() -> bool:
            return all(agrees(node) for node in self.nodes if node.running)

        wait_for(ready, timeout=timeout, what=f"{topic} to have {count} in-sync replicas", interval=0.2)

    def _live_bootstrap(self) -> str:
        live = [node.address for node in self.nodes if node.running]
        if not live:
            raise InfraError("no Kafka node is running")
        return ",".join(live)

    # -- internals -----------------------------------------------------------------------------------

    def _create_nodes(self, java: str, libs: Path) -> None:
        assert self.base_dir is not None
        ports = free_ports(2 * self.size)
        log4j = self.base_dir / "log4j.properties"
        level = os.environ.get("TOKENTRACE_KAFKA_LOG_LEVEL", "WARN")
        log4j.write_text(_LOG4J.format(level=level))
        for i in range(self.size):
            home = self.base_dir / f"node-{i + 1}"
            home.mkdir()
            argv = [
                java,
                *self._jvm_opts(java, log4j, first=i == 0),
                "-cp",
                f"{libs}/*",
                "kafka.Kafka",
                str(home / "server.properties"),
            ]
            proc = ServerProcess(f"kafka node {i + 1}", argv, home / "server.log", cwd=home)
            self.nodes.append(KafkaNode(i + 1, ports[2 * i], ports[2 * i + 1], home, proc))
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        for node in self.nodes:
            props = self._properties(node, voters)
            (node.home / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _jvm_opts(self, java: str, log4j: Path, *, first: bool) -> list[str]:
        extra = os.environ.get("TOKENTRACE_KAFKA_JVM_OPTS", "").split()
        opts = [f"-Xmx{self.heap_mb}m", "-Xms64m", *_JVM_OPTS, f"-Dlog4j.configuration=file:{log4j}"]
        archive = class_archive(java)
        if archive.is_file():
            opts.append(f"-XX:SharedArchiveFile={archive}")
        elif first:
            self._archive = archive
            opts.append(f"-XX:ArchiveClassesAtExit={archive}.{os.getpid()}.tmp")
        return opts + extra

    def _properties(self, node: KafkaNode, voters: str) -> dict[str, str]:
        rf = str(min(3, self.size))
        min_isr = str(min(2, self.size))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.home / "data"),
            "num.partitions": "1",
            "default.replication.factor": rf,
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "num.replica.fetchers": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(4 << 20),
            "log.segment.bytes": str(16 << 20),
            "log.index.size.max.bytes": str(1 << 20),
            "log.retention.check.interval.ms": "60000",
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "4000",
            "replica.lag.time.max.ms": "10000",
            "unclean.leader.election.enable": "false",
        }
        props.update(self.extra_config)
        return props

    def _format(self, java: str, libs: Path) -> None:
        """Format every node's storage (``kafka-storage.sh format``), all nodes in parallel."""
        assert self.base_dir is not None
        log4j = f"-Dlog4j.configuration=file:{self.base_dir / 'log4j.properties'}"
        procs = []
        for node in self.nodes:
            conf = str(node.home / "server.properties")
            archive = class_archive(java)
            cds = [f"-XX:SharedArchiveFile={archive}"] if archive.is_file() else []
            argv = [java, "-Xmx128m", *_JVM_OPTS, *cds, log4j, "-cp", f"{libs}/*", "kafka.tools.StorageTool"]
            # "--cluster-id=ID" form: a base64url id may start with "-", which argparse would take for a flag.
            argv += ["format", f"--cluster-id={self.cluster_id}", "--config", conf]
            proc = ServerProcess(f"kafka storage format {node.node_id}", argv, node.home / "format.log")
            proc.start()
            procs.append(proc)
        for proc in procs:
            if not proc.wait(60):
                proc.kill()
            if proc.returncode != 0:
                raise InfraError(f"{proc.name} failed; end of {proc.log_path}:\n{proc.log_tail()}")


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.infra.kafka", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download the jars and build the class archive (idempotent)")
    fetch_cmd.add_argument("--force", action="store_true", help="download again even if cached")
    start_cmd = sub.add_parser("start", help="run a broker in the foreground until Ctrl-C")
    start_cmd.add_argument("-n", "--nodes", type=int, default=1, help="number of KRaft nodes (default 1)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            if args.force:
                fetch(force=True)
            print(f"Kafka {kafka_version()} jars in {prepare()}")
            return 0
        began = time.monotonic()
        with KafkaCluster(args.nodes) as cluster:
            took = time.monotonic() - began
            banner = [f"Kafka {kafka_version()} ready in {took:.1f}s (data in {cluster.base_dir})", cluster.bootstrap]

            def check_alive() -> None:
                for node in cluster.nodes:
                    node.process.check_alive()

            serve_until_signalled(banner, check_alive)
        return 0
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
