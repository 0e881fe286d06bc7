"""Apache Kafka on loopback: fetch the broker jars with Maven once, run KRaft brokers from them.

``fetch()`` runs ``mvn dependency:copy-dependencies`` on ``kafka-pom.xml`` (which pins the version) into
``$TOKENTRACE_CACHE/kafka-<version>`` (default ``~/.cache/tokentrace``); a marker file makes later
calls free. ``KafkaCluster(size=1)`` is one combined controller+broker node, ``size=3`` three combined
nodes that are all KRaft voters. Each node has a 512 MB heap, serial GC and small segments. Client ports
are free ones unless ``port`` is given (node i then listens on ``port + i``); data lives in a temp dir
removed by ``stop()``, or in ``data_dir``, which is kept and reused (formatted once). From a shell::

    python -m tokentrace.devcluster.kafka [--port 9092] [--data-dir DIR] [-n 3]   # until Ctrl-C (0: free ports)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient

from tokentrace.devcluster.procs import (
    DevClusterError,
    ServerProcess,
    Service,
    find_tool,
    free_ports,
    port_accepts,
    port_free,
    wait_for,
)

__all__ = [
    "KafkaCluster",
    "KafkaNode",
    "admin_call",
    "cache_dir",
    "class_archive",
    "fetch",
    "find_java",
    "is_cached",
    "kafka_version",
    "libs_dir",
    "run_async",
]

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
        raise DevClusterError(f"{POM} has no <kafka.version> property")
    return node.text.strip()


def cache_dir() -> Path:
    """Where the jars of this Kafka version are cached."""
    base = os.environ.get("TOKENTRACE_CACHE") or str(Path.home() / ".cache" / "tokentrace")
    return Path(base) / f"kafka-{kafka_version()}"


def libs_dir() -> Path:
    """The folder holding the broker's jars (complete only after ``fetch()``)."""
    return cache_dir() / "libs"


def is_cached() -> bool:
    """Whether ``fetch()`` has completed for this version (so it will not run Maven)."""
    return (cache_dir() / _MARKER).is_file()


def fetch(*, force: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """Download the broker jars with Maven unless the cache is already complete; returns ``libs_dir()``.

    ``progress`` gets a line before Maven runs and one when it is done (nothing when cached).
    """
    target = cache_dir()
    if is_cached() and not force:
        return libs_dir()
    try:
        mvn = find_tool("mvn", "maven")
    except DevClusterError:
        raise DevClusterError(
            f"the Kafka jars are not cached in {target} and `mvn` is not on PATH: install Maven "
            "(Debian/Ubuntu package `maven`) or run scripts/install-test-deps"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_cached() and not force:
            return libs_dir()
        if progress:
            progress(f"fetching the Kafka {kafka_version()} jars with Maven into {target} (first run only, ~70 MB)")
        began = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _run_maven(mvn, staging / "libs")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        jars = sorted(p.name for p in libs_dir().glob("*.jar"))
        (target / _MARKER).write_text("\n".join(jars) + "\n")
        if progress:
            progress(f"fetched {len(jars)} jars in {time.monotonic() - began:.0f}s")
    return libs_dir()


def _run_maven(mvn: str, out: Path) -> None:
    argv = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-Dkafka.libs={out}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    main_jar = out / f"kafka_2.13-{kafka_version()}.jar"
    if done.returncode != 0 or not main_jar.is_file():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise DevClusterError(f"fetching the Kafka jars failed ({' '.join(argv)} exit {done.returncode}):\n{tail}")


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH; else an error naming a package that installs it."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise DevClusterError(
            "no `java` found (JAVA_HOME or PATH): Kafka needs a JDK or JRE 11+, e.g. the Debian/Ubuntu package "
            "`default-jre-headless` (or `openjdk-17-jre-headless`)"
        )
    return java


def class_archive(java: str) -> Path:
    """The AppCDS archive of the broker's classes for this JDK (it halves JVM start-up on 2 cores).

    Written by the first node of a cluster when it exits gracefully, if it is missing; a JVM that
    cannot use it (another JDK build, other jars) ignores it.
    """
    real = Path(java).resolve()
    tag = hashlib.sha1(f"{real}:{real.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / f"classes-{tag}.jsa"


def run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion on a fresh loop in a worker thread (safe inside a running loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def admin_call(bootstrap: str, call: str, *args: Any) -> Any:
    """One call of ``AIOKafkaAdminClient`` against ``bootstrap`` with a client of its own."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        return await getattr(admin, call)(*args)
    finally:
        await admin.close()


def _broker_ids(address: str) -> set[int]:
    """The broker ids that ``address`` lists as live, or an empty set while it does not answer."""
    try:
        meta = run_async(admin_call(address, "describe_cluster"))
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


class KafkaCluster(Service):
    """A KRaft cluster of ``size`` combined nodes on loopback; ``size=1`` is a single broker.

    ``start()`` fetches the jars if needed, formats the storage (once, for a kept ``data_dir``) and
    waits until every node serves metadata listing all of them. Use as a context manager or call ``stop()``.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        heap_mb: int = 512,
        startup_timeout: float = 120.0,
        config: Mapping[str, str] | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.heap_mb = heap_mb
        self.startup_timeout = startup_timeout
        self.extra_config = dict(config or {})
        self.port = port
        self.data_dir = data_dir
        self.progress = progress
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes: list[KafkaNode] = []
        self.base_dir: Path | None = None
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
        libs = fetch(progress=self.progress)
        java = find_java()
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.base_dir = self.data_dir
        else:
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

    def terminate(self) -> None:
        """SIGTERM every node without waiting (``stop()`` finishes the job)."""
        for node in self.nodes:
            node.process.terminate()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM all nodes, SIGKILL those still up after ``timeout`` s, and delete a temp data dir."""
        self.terminate()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if not node.process.wait(max(0.0, deadline - time.monotonic())):
                node.process.kill()
            else:
                node.process.stop(0)  # sweeps the node's process group
        if self._archive is not None:
            written = Path(f"{self._archive}.{os.getpid()}.tmp")
            if written.is_file() and self.nodes[0].process.returncode in (0, 143):  # 143: exit on SIGTERM
                written.replace(self._archive)
            written.unlink(missing_ok=True)
            self._archive = None
        if self.base_dir is not None:
            if self.base_dir != self.data_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def check_alive(self) -> None:
        """Raise DevClusterError with its log's tail if a node has exited."""
        for node in self.nodes:
            node.process.check_alive()

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
            raise DevClusterError(f"Kafka node {node_id} is still running; kill or stop it first")
        node.process.start()
        self.wait_ready(timeout)

    # -- internals -----------------------------------------------------------------------------------

    def _client_ports(self) -> list[int]:
        if self.port is None:
            return free_ports(self.size)
        ports = [self.port + i for i in range(self.size)]
        busy = [p for p in ports if not port_free(p)]
        if busy:
            raise DevClusterError(
                f"port {busy[0]} on 127.0.0.1 is in use: stop what listens there or pick another port"
            )
        return ports

    def _create_nodes(self, java: str, libs: Path) -> None:
        assert self.base_dir is not None
        clients = self._client_ports()
        controllers = [p for p in free_ports(self.size + len(clients)) if p not in clients][: self.size]
        log4j = self.base_dir / "log4j.properties"
        level = os.environ.get("TOKENTRACE_KAFKA_LOG_LEVEL", "WARN")
        log4j.write_text(_LOG4J.format(level=level))
        for i in range(self.size):
            home = self.base_dir / f"node-{i + 1}"
            home.mkdir(exist_ok=True)
            argv = [
                java,
                *self._jvm_opts(java, log4j, first=i == 0),
                "-cp",
                f"{libs}/*",
                "kafka.Kafka",
                str(home / "server.properties"),
            ]
            proc = ServerProcess(f"kafka node {i + 1}", argv, home / "server.log", cwd=home)
            self.nodes.append(KafkaNode(i + 1, clients[i], controllers[i], home, proc))
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
        """Format every node's storage (``kafka-storage.sh format``), all nodes in parallel.

        A node whose data dir is already formatted (a kept ``data_dir``) is left alone, and the cluster
        id is read from it.
        """
        assert self.base_dir is not None
        log4j = f"-Dlog4j.configuration=file:{self.base_dir / 'log4j.properties'}"
        procs = []
        for node in self.nodes:
            meta = node.home / "data" / "meta.properties"
            if meta.is_file():
                self.cluster_id = _read_cluster_id(meta) or self.cluster_id
                continue
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
                raise DevClusterError(f"{proc.name} failed; end of {proc.log_path}:\n{proc.log_tail()}")


def _read_cluster_id(meta: Path) -> str | None:
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return None


def serve_until_signalled(banner: Sequence[str], check_alive: Callable[[], None]) -> None:
    """Print ``banner`` and block until SIGINT or SIGTERM, checking the servers every second.

    The handlers go in before the banner: a reader that signals as soon as it sees the address must not
    meet the default SIGINT action. ``check_alive`` raises DevClusterError when a server died.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for line in banner:
        print(line, flush=True)
    while not stop.wait(1.0):
        check_alive()


def main(
    argv: list[str] | None = None, prog: str = "python -m tokentrace.devcluster.kafka", default_port: int | None = 9092
) -> int:
    """Run a broker (or cluster) in the foreground until SIGINT/SIGTERM; print its bootstrap address.

    ``--port 0`` (and no ``default_port``) picks free ports.
    """
    parser = argparse.ArgumentParser(prog=prog, description="Run a local KRaft Kafka broker until Ctrl-C.")
    parser.add_argument("-n", "--nodes", type=int, default=1, help="number of KRaft nodes (default 1)")
    shown = "a free one" if default_port is None else str(default_port)
    parser.add_argument(
        "--port",
        type=int,
        default=default_port or 0,
        help=f"client port of node 1, node i on PORT+i-1 (default {shown}; 0: free ports)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the data here between runs (default temp)")
    args = parser.parse_args(argv)
    cluster = KafkaCluster(
        args.nodes, port=args.port or None, data_dir=args.data_dir, progress=lambda line: print(line, flush=True)
    )

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # a SIGTERM during start-up stops what has started, like Ctrl-C

    signal.signal(signal.SIGTERM, interrupt)
    try:
        began = time.monotonic()
        with cluster:
            took = time.monotonic() - began
            where = f"data in {cluster.base_dir}" + ("" if args.data_dir else ", deleted on exit")
            banner = [f"Kafka {kafka_version()} ready in {took:.1f}s ({where})", cluster.bootstrap]
            serve_until_signalled(banner, cluster.check_alive)
        return 0
    except KeyboardInterrupt:
        return 0
    except DevClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
