"""The view's writer: a worker's entries into the Redis view (layout: ``view.keys``), idempotently.

Entries go through the view's compare-and-set script, so they can be written again at any time: after
a crash, after a rebalance, or after Redis lost everything. ``Materializer`` keeps the newest encoded
version of each entry until Redis has taken it (a Redis outage delays the view, it never loses it:
the worker's tables still hold the state) and re-queues every entry of the partitions it owns when it
finds the view's epoch changed (a flushed or restarted Redis).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from tokentrace.view.keys import (
    COLLECT_TOMBSTONES,
    EXPIRE_TRACES,
    WRITE_ENTRY,
    Keys,
    count_spans,
    trace_index_commands,
)
from tokentrace.view.pipeline import send_counted

if TYPE_CHECKING:
    from tokentrace.view.keys import IndexItem

__all__ = ["Materializer", "Pending"]

log = logging.getLogger(__name__)

#: (key, offset, encoded entry or b"" for a deleted one)
Pending = tuple[bytes, int, bytes]


#: Trace-index pipelines go to Redis in sends of up to this many bytes, one round trip each. The worker's event
#: loop serves those round trips between applying events, so one per 2,000-trace pipeline made a flush's index
#: take seconds at 90k spans/s, holding back the next flushes (bench/RESULTS.md).
TRACE_SEND_BYTES = 16 * 2**20


def _sends(pipelines: list[tuple[bytes, int]]) -> list[tuple[list[bytes], int]]:
    """Consecutive pipelines grouped into sends of at most ``TRACE_SEND_BYTES`` (or one pipeline): ``(parts,
    replies)``."""
    sends: list[tuple[list[bytes], int]] = []
    size = TRACE_SEND_BYTES
    for commands, replies in pipelines:
        if size + len(commands) > TRACE_SEND_BYTES:
            sends.append(([], 0))
            size = 0
        parts, count = sends[-1]
        parts.append(commands)
        sends[-1] = (parts, count + replies)
        size += len(commands)
    return sends


class _Backoff:
    """Delays between retries of a Redis write: 0.1 s, doubling up to 2 s."""

    def __init__(self) -> None:
        self.delay = 0.1

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 2.0)


class Materializer:
    """Background writer of entries, plus synchronous trace writes and the epoch watch."""

    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        trace_retention_ms: int,
        snapshot_all: Callable[[], Iterable[Pending]],
        batch: int = 500,
        trace_retry_s: float = 30.0,
    ) -> None:
        self.redis_url = redis_url
        self.keys = keys
        self.trace_retention_ms = trace_retention_ms
        self.snapshot_all = snapshot_all
        self.batch = batch
        self.trace_retry_s = trace_retry_s
        self.epoch: str | None = None
        self.written = 0
        self.trace_failures = 0
        self._redis: aioredis.Redis | None = None
        self._script: Any = None
        self._expire_traces: Any = None
        self._collect: Any = None
        #: Tombstones dropped by ``collect_tombstones``.
        self.collected = 0
        self._pending: dict[bytes, tuple[int, bytes]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def redis(self) -> aioredis.Redis:
        return self._connect()

    def _connect(self) -> aioredis.Redis:
        """The client (created on first use, inside the running loop) with its scripts registered."""
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
            self._script = self._redis.register_script(WRITE_ENTRY)
            self._expire_traces = self._redis.register_script(EXPIRE_TRACES)
            self._collect = self._redis.register_script(COLLECT_TOMBSTONES)
        return self._redis

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # ----------------------------------------------------------------- entries
    def submit(self, items: Iterable[Pending]) -> None:
        """Queue entries (keeping only the newest version of each) for the background writer."""
        pending = self._pending
        for key, offset, data in items:
            current = pending.get(key)
            if current is None or current[0] < offset:
                pending[key] = (offset, data)
        if pending:
            self._idle.clear()
            self._wake.set()

    async def run(self) -> None:
        """The background writer: drain the queue into Redis, retrying with backoff while it is down."""
        backoff = _Backoff()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                items = list(self._pending.items())[: self.batch]
                try:
                    if self.epoch is None:
                        # The view has an epoch before its first entry, so that a reader always sees a flush
                        # (the epoch gone) rather than new entries numbered below what it has read.
                        await self.check_epoch()
                    await self._write(items)
                except Exception as exc:  # Redis down or restarting: keep the entries, retry
                    log.warning("redis view: write failed (%r), retrying in %.1fs", exc, backoff.delay)
                    await backoff.sleep()
                    continue
                backoff = _Backoff()
                for key, version in items:
                    if self._pending.get(key) == version:
                        del self._pending[key]
            self._idle.set()

    @property
    def idle(self) -> bool:
        """Whether everything submitted has been written."""
        return self._idle.is_set()

    async def _write(self, items: list[tuple[bytes, tuple[int, bytes]]]) -> None:
        redis = self.redis
        keys = self.keys
        async with redis.pipeline(transaction=False) as pipe:
            for key, (offset, data) in items:
                member = key.decode()
                await self._script(
                    keys=[keys.entry(member), keys.seq, keys.changes, keys.tombstones],
                    args=[offset, data, member],
                    client=pipe,
                )
            await pipe.execute()
        self.written += len(items)

    async def collect_tombstones(self, older_than_s: float, now_s: float, limit: int = 1000) -> int:
        """Drop the view's tombstones of deletions made more than ``older_than_s`` ago (up to ``limit``).

        Without this, every retired or compacted bucket would leave a key and a change-feed member behind
        forever. Safe because whatever absorbed the deleted entry (its hour entry, its partition's retired
        horizon) was written before the deletion and hides a late copy from every reader.
        """
        self._connect()
        keys = self.keys
        dropped = int(
            await self._collect(
                keys=[keys.tombstones, keys.changes], args=[keys.entry_prefix, int(now_s - older_than_s), limit]
            )
        )
        self.collected += dropped
        return dropped

    # ------------------------------------------------------------------ epoch
    async def check_epoch(self) -> bool:
        """Make sure the view has an epoch; re-queue everything if it is not the one we wrote to."""
        redis = self.redis
        epoch = await redis.get(self.keys.epoch)
        if epoch is None:
            await redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
            epoch = await redis.get(self.keys.epoch)
        text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        if text == self.epoch:
            return False
        if self.epoch is not None:
            log.warning("redis view: epoch changed (Redis flushed or restarted): re-materializing")
        self.epoch = text
        self.submit(self.snapshot_all())
        return True

    # ----------------------------------------------------------------- traces
    async def write_traces(self, spans: list[IndexItem]) -> None:
        """Index ``(span, start ms)`` pairs and compiled batches of them for ``/traces`` (a replay appends spans
        again: readers keep the last of each span id). The pipelines go in sends of up to ``TRACE_SEND_BYTES``.

        While Redis is unreachable or loading (a restart) this retries for up to ``trace_retry_s``, holding
        back the acks of the flush's events meanwhile, so a Redis restart loses no trace; past that, or on an
        error Redis answers (out of memory, say), the spans are left out of ``/traces``, logged and counted in
        ``trace_failures`` (their aggregates are not affected).
        """
        if not spans:
            return
        client = self._connect()
        sends = _sends(trace_index_commands(spans, self.keys.trace_prefix, self.keys.traces))
        deadline = time.monotonic() + self.trace_retry_s
        backoff = _Backoff()
        done = 0
        while done < len(sends):
            try:
                await send_counted(client, *sends[done])
                done += 1
            except (aioredis.ConnectionError, aioredis.TimeoutError, aioredis.BusyLoadingError) as exc:
                if time.monotonic() + backoff.delay > deadline:
                    self._trace_failed(count_spans(spans), exc)
                    return
                await backoff.sleep()
            except Exception as exc:
                self._trace_failed(count_spans(spans), exc)
                return

    def _trace_failed(self, spans: int, exc: BaseException) -> None:
        self.trace_failures += spans
        log.warning("redis view: could not index %d spans for /traces: %r", spans, exc)

    async def expire_traces(self, now_ms: int, *, limit: int = 2000, rounds: int = 50) -> int:
        """Delete the traces that started more than the trace retention before ``now_ms`` (spans and listing
        entries), ``limit`` per script call (Redis serves other clients between calls) and at most ``rounds``
        calls, so one pass after a long outage does not hold the worker up: the next pass goes on. Returns how
        many were deleted."""
        self._connect()
        keys = self.keys
        horizon = now_ms - self.trace_retention_ms
        deleted = 0
        for _ in range(rounds):
            args = [keys.trace_prefix, horizon, limit, keys.legacy_trace_prefix]
            done = int(await self._expire_traces(keys=[keys.traces], args=args))
            deleted += done
            if done < limit:
                break
        return deleted
