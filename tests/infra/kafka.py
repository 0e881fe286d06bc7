"""Real Apache Kafka for tests: the dev cluster's broker (``tokentrace.devcluster.kafka``) plus topic helpers.

``fetch()`` runs Maven once into ``$TOKENTRACE_CACHE/kafka-<version>`` (default ``~/.cache/tokentrace``);
``KafkaCluster(size=1)`` is one combined controller+broker node, ``size=3`` three combined nodes that are
all KRaft voters (for fault tests: ``kill``, ``stop_node``, ``restart``), on free ports below the
ephemeral range, with data in a temp dir removed by ``stop()``. This module adds uniquely named topics
and in-sync-replica waits. From a shell::

    python -m tests.infra.kafka fetch                    # the jars (scripts/install-test-deps does this)
    python -m tests.infra.kafka start [-n 3] [--port P]  # a broker (or cluster) in the foreground
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import NewTopic

from tests.infra.procs import InfraError, wait_for
from tokentrace.devcluster import kafka as _dev
from tokentrace.devcluster.kafka import (
    KafkaNode,
    admin_call,
    cache_dir,
    class_archive,
    fetch,
    find_java,
    kafka_version,
    libs_dir,
    run_async,
)

__all__ = ["KafkaCluster", "KafkaNode", "cache_dir", "class_archive", "fetch", "kafka_version", "libs_dir", "prepare"]


def prepare() -> Any:
    """``fetch()`` plus the class archive (starts and stops one broker if it is missing)."""
    libs = fetch(progress=print)
    if not class_archive(find_java()).is_file():
        with KafkaCluster(1):
            pass
    return libs


class KafkaCluster(_dev.KafkaCluster):
    """The dev cluster's KRaft cluster with test topics: ``create_topic``, ``partitions``, ``wait_isr``."""

    _topic_seq = 0

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
        response = run_async(admin_call(self._live_bootstrap(), "create_topics", [new]))
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
        topics = run_async(admin_call(address, "describe_topics", [topic]))
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


def _main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["start"]:
        return _dev.main(args[1:], prog="python -m tests.infra.kafka start", default_port=None)
    parser = argparse.ArgumentParser(prog="python -m tests.infra.kafka", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download the jars and build the class archive (idempotent)")
    fetch_cmd.add_argument("--force", action="store_true", help="download again even if cached")
    sub.add_parser("start", help="run a broker in the foreground until Ctrl-C (-n N, --port P, --data-dir D)")
    parsed = parser.parse_args(args)
    try:
        if parsed.force:
            fetch(force=True, progress=print)
        print(f"Kafka {kafka_version()} jars in {prepare()}")
        return 0
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
