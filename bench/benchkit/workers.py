"""``tokentrace worker`` processes of one deployment, the spans their Redis view counts, and one measured run.

``Workers`` starts workers as an operator would (``python -m tokentrace worker`` with flags), each in its own
process group with its log in a file; ``ViewCount`` reads the view's exact span count (the figure ``/health``
reports as ``span_count``) from the partition meta entries alone; ``workers_run`` measures the rate of N
workers over a backlog from the moment the group settled to the last span counted.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis.asyncio as aioredis

from benchkit.procfs import cpu_seconds, machine_cpu
from tokentrace.devcluster.kafka import KafkaCluster
from tokentrace.devcluster.procs import ServerProcess
from tokentrace.devcluster.redis import RedisServer
from tokentrace.view.keys import Keys
from tokentrace.view.schema import PartitionMeta, decode_entry, meta_key

__all__ = ["STALL_S", "ViewCount", "Workers", "WorkersRun", "group_ready", "workers_run"]

#: A rate run gives up when the view's count has not moved for this long.
STALL_S = 90.0


class Workers:
    """``tokentrace worker`` processes of one deployment (same app id, topic and Redis)."""

    def __init__(
        self,
        bootstrap: str,
        redis_url: str,
        topic: str,
        log_dir: Path,
        *,
        app_id: str | None = None,
        session_timeout: float = 6.0,
        extra_args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        """``cwd``: where the workers run. ``python -m`` puts it first on ``sys.path``, ahead of PYTHONPATH, so a
        worker meant to import another tree's ``tokentrace`` (a benchmark's variant) must run where that one is
        found, not in a checkout with its own ``tokentrace/``."""
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.topic = topic
        self.log_dir = log_dir
        self.app_id = app_id or f"tt-{topic}"
        self.session_timeout = session_timeout
        self.extra_args = list(extra_args)
        self.cwd = cwd
        self.procs: list[ServerProcess] = []

    def start(self) -> ServerProcess:
        """One more worker, started (not waited for)."""
        number = len(self.procs) + 1
        argv = [sys.executable, "-m", "tokentrace", "worker"]
        argv += ["--bootstrap-servers", self.bootstrap, "--redis-url", self.redis_url, "--topic", self.topic]
        argv += ["--app-id", self.app_id, "--session-timeout", str(self.session_timeout), *self.extra_args]
        proc = ServerProcess(f"worker {number}", argv, self.log_dir / f"worker-{number}.log", cwd=self.cwd)
        proc.start()
        self.procs.append(proc)
        return proc

    def alive(self) -> list[ServerProcess]:
        """The workers still running."""
        return [p for p in self.procs if p.running]

    def logs(self) -> str:
        """The last lines of every worker's log, for a failure message."""
        return "".join(f"\n--- {p.log_path}:\n{p.log_tail(30)}" for p in self.procs)

    def stop_all(self) -> None:
        """SIGTERM every worker, SIGKILL those not gone within 15 s."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            if not proc.wait(15):
                proc.kill()


class ViewCount:
    """Spans counted in the Redis view: the sum of its partition meta entries, the figure ``/health`` reports
    as ``span_count``. A ``RedisStore`` gets it by syncing the whole view, decoding every bucket entry a flush
    changed; that cost a benchmark 12-16 % of a core, taken from the workers it measures on the same cores.
    This reads the meta entries alone."""

    def __init__(self, redis_url: str, prefix: str, partitions: int) -> None:
        self.redis = aioredis.Redis.from_url(redis_url)
        self.members = [Keys(prefix).entry(meta_key(p).decode()) for p in range(partitions)]

    async def spans(self) -> int:
        """The view's span count now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in self.members:
                pipe.hget(member, "d")
            values = await pipe.execute()
        metas = [decode_entry(value) for value in values if value]
        return sum(meta.spans for meta in metas if isinstance(meta, PartitionMeta))

    async def close(self) -> None:
        await self.redis.aclose()


@dataclass
class WorkersRun:
    """One measured run of ``workers_run``: its rate and what the workers and the machine spent on it."""

    rate: float  # spans/s
    cpu_us_per_span: float  # the workers' CPU together
    machine_busy_cores: float
    stolen_cores: float  # taken by other tenants of the machine


async def workers_run(
    kafka: KafkaCluster,
    redis: RedisServer,
    topic: str,
    count: int,
    total: int,
    logs: Path,
    tag: str = "",
    worker_args: Sequence[str] = (),
    partitions: int = 4,
    on_start: Callable[[int], None] | None = None,
) -> WorkersRun:
    """Spans/s of ``count`` workers (fresh group, Redis prefix ``bench<count><tag>-<topic>:``), from the first
    span counted once every worker is ready (``group_ready``) to the last. ``on_start`` is called with each
    worker's pid as it starts (bench/worker_scaling.py puts it under a CPU quota there).

    Workers started together rarely join in one generation: the first takes every partition and starts on
    the backlog, the others join and a rebalance pauses them all. Counting from the first span would charge
    that rebalance to the throughput (a fifth of a 300,000-span run); the rebalance is reported instead.
    Raises ``RuntimeError`` when the view's count is not exactly ``total`` (stalled for ``STALL_S`` or past
    ten minutes)."""
    prefix = f"bench{count}{tag}-{topic}:"
    workers = Workers(
        kafka.bootstrap,
        redis.url,
        topic,
        logs,
        app_id=f"bench-{count}{tag}-{topic}",
        extra_args=["--prefix", prefix, *worker_args],
    )
    view = ViewCount(redis.url, prefix, partitions)
    try:
        for _ in range(count):
            pid = workers.start().pid
            if on_start is not None and pid is not None:
                on_start(pid)
        # (wall clock, spans counted in the view, the workers' CPU seconds, the machine's busy and stolen seconds)
        samples: list[tuple[float, int, float, float, float]] = []
        counted = 0
        deadline = time.monotonic() + 600
        moved = time.monotonic()
        while counted < total and time.monotonic() < deadline and time.monotonic() - moved < STALL_S:
            now_counted = await view.spans()
            if now_counted != counted:
                moved = time.monotonic()
            counted = now_counted
            workers_cpu = sum(cpu_seconds(proc.pid) for proc in workers.procs)
            samples.append((time.time(), counted, workers_cpu, *machine_cpu()))
            await asyncio.sleep(0.02)
        if counted != total:
            raise RuntimeError(
                f"{count} worker(s) counted {counted:,} of {total:,} spans in the view (prefix {prefix!r}; "
                f"no progress for {STALL_S:.0f} s or past the deadline); logs in {logs}"
            )
        ready = max(group_ready(proc.log_path) for proc in workers.procs)
        counting = [sample for sample in samples if sample[1]]
        start = max([sample for sample in counting if sample[0] <= ready] or [counting[0]])
        end = samples[-1]
        if count > 1:
            print(
                f"{count} workers: {start[1]:,} of {total:,} spans counted before the group settled "
                f"({max(0.0, ready - counting[0][0]):.1f} s after the first count); rate measured after it",
                file=sys.stderr,
            )
            if start[1] > total / 2:
                print("  (more than half counted before: use more --spans for a steadier figure)", file=sys.stderr)
        wall, spans = end[0] - start[0], total - start[1]
        run = WorkersRun(
            rate=spans / wall,
            cpu_us_per_span=1e6 * (end[2] - start[2]) / spans,
            machine_busy_cores=(end[3] - start[3]) / wall,
            stolen_cores=(end[4] - start[4]) / wall,
        )
        print(
            f"{count} worker(s), measured {wall:.1f} s: workers {run.cpu_us_per_span:.1f} CPU µs per span; machine "
            f"{run.machine_busy_cores:.2f} of {os.cpu_count()} cores busy ({run.stolen_cores:.2f} stolen by other "
            "tenants)",
            file=sys.stderr,
        )
        return run
    finally:
        workers.stop_all()
        await view.close()


def group_ready(log: Path) -> float:
    """When a worker last logged Faust's "Worker ready" (after each rebalance), as a Unix time; 0 if never."""
    ready = 0.0
    for line in log.read_text(errors="replace").splitlines():
        if "Worker ready" in line and line.startswith("["):
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")  # local time, as logging writes it
            ready = max(ready, stamp.timestamp())
    return ready
