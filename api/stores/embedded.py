"""The embedded store: aggregates and traces in memory, made durable by a WAL plus snapshots.

``ingest`` appends the batch to the write-ahead log, applies it to memory in the same event-loop step,
and returns once the log is fsync'd — so a 202 means "on disk". Snapshots are taken at a WAL segment
boundary in one synchronous step (state and log position agree), written atomically, and let restart
replay only the segments after them. Recovery = newest readable snapshot + replay of later segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from tokentrace.api.stores.base import StoreHealth, StoreUnavailable
from tokentrace.api.stores.wal import WriteAheadLog
from tokentrace.core.buckets import Projection
from tokentrace.core.codec import decode_wire, encode_wire
from tokentrace.core.span import Span, span_time_ms
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import LifetimeParts, Timeline, TimelineSettings, TimelineSnapshot
from tokentrace.core.traces import TraceFilter, TraceIndex

__all__ = ["EmbeddedSettings", "EmbeddedStore"]

log = logging.getLogger(__name__)
SNAPSHOT_VERSION = 1


class EmbeddedSettings(msgspec.Struct, frozen=True):
    timeline: TimelineSettings = TimelineSettings()
    max_spans: int = 100_000
    trace_retention_ms: int = 7 * 86_400_000
    snapshot_interval_s: float = 300.0
    snapshot_wal_bytes: int = 64 * 1024 * 1024
    maintenance_interval_s: float = 30.0


class _Snapshot(msgspec.Struct):
    version: int
    wal_seq: int
    span_total: int
    timeline: TimelineSnapshot
    spans: list[Span]


_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)
_snapshot_encoder = msgspec.msgpack.Encoder()


class EmbeddedStore:
    """One process, no external services, durable across restarts and ``kill -9``."""

    transport = "embedded"

    def __init__(self, data_dir: Path, settings: EmbeddedSettings | None = None) -> None:
        self.settings_all = settings or EmbeddedSettings()
        self.settings = self.settings_all.timeline
        self.data_dir = data_dir
        self.timeline = Timeline(self.settings)
        self.traces = TraceIndex(self.settings_all.max_spans, self.settings_all.trace_retention_ms)
        self.span_total = 0
        #: Log records skipped at recovery because they could not be applied (logged with their error).
        self.replay_failures = 0
        self._wal: WriteAheadLog | None = None
        self._failure: str | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._last_snapshot_s = 0.0
        self._snapshotting: asyncio.Task[None] | None = None
        self._closed = False

    # --------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        """Recover state from disk and start background maintenance."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        snapshot_seq = self._load_snapshot()
        self._wal = WriteAheadLog(self.data_dir / "wal")
        replayed = 0
        for payload in self._wal.replay(snapshot_seq):
            try:
                spans = decode_wire(payload)
                self._apply(spans)
            except Exception:  # a record this build cannot apply must not keep the server down
                self.replay_failures += 1
                log.exception("skipping a write-ahead log record that cannot be applied")
                continue
            replayed += len(spans)
        self.timeline.compact(now_ms())
        log.info("recovered %d spans (%d replayed from the log)", self.span_total, replayed)
        self._last_snapshot_s = asyncio.get_running_loop().time()
        self._maintenance = asyncio.create_task(self._maintain())

    async def close(self) -> None:
        """Stop maintenance, take a final snapshot (fast restart), close the log. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        if self._snapshotting is not None:
            await asyncio.gather(self._snapshotting, return_exceptions=True)
        if self._wal is not None:
            if self._failure is None:
                with contextlib.suppress(OSError):
                    await self._snapshot()
            await self._wal.close()

    # ------------------------------------------------------------------ writes
    async def ingest(self, spans: list[Span]) -> None:
        if self._failure is not None:
            raise StoreUnavailable(self._failure)
        assert self._wal is not None, "store not opened"
        try:
            durable = self._wal.write(encode_wire(spans))
        except OSError as exc:
            self._fail(f"cannot write the log: {exc}")
            raise StoreUnavailable(self._failure or "") from exc
        self._apply(spans)
        try:
            await durable
        except OSError as exc:
            self._fail(f"cannot fsync the log: {exc}")
            raise StoreUnavailable(self._failure or "") from exc

    def _apply(self, spans: list[Span]) -> None:
        self.timeline.add_many(spans, [span_time_ms(span) for span in spans])
        traces = self.traces
        for span in spans:
            traces.add(span)
        self.span_total += len(spans)

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            log.error("embedded store unhealthy: %s", reason)
        self._failure = reason

    def oldest_allowed_ms(self, now: int) -> int:
        return self.timeline.oldest_allowed_ms(now)

    # ------------------------------------------------------------------- reads
    async def query(self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]) -> Projection:
        return self.timeline.query(start_ms, end_ms, groupby, where)

    async def lifetime(self, groupby: str | None) -> Projection:
        return self.timeline.lifetime(groupby)

    async def query_parts(
        self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]
    ) -> LifetimeParts:
        return self.timeline.query_parts(start_ms, end_ms, groupby, where)

    async def lifetime_parts(self, groupby: str | None) -> LifetimeParts:
        return self.timeline.lifetime_parts(groupby)

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        trace = self.traces.get(trace_id)
        return None if trace is None else trace.body()

    async def search_traces(self, where: TraceFilter, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        total, page = self.traces.search(where, limit, offset)
        return total, [t.summary() for t in page]

    async def recent_spans(self, limit: int) -> list[Span]:
        return self.traces.recent_spans(limit)

    async def health(self) -> StoreHealth:
        pending = self._wal.pending if self._wal is not None else 0
        return StoreHealth(self._failure is None, self._failure, self.span_total, pending, self.transport)

    # ------------------------------------------------------------- maintenance
    async def _maintain(self) -> None:
        interval = self.settings_all.maintenance_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                self.maintain_now()
            except Exception:  # a maintenance bug must not kill the server
                log.exception("maintenance failed")

    def maintain_now(self) -> None:
        """Compact and expire old state; start a snapshot when one is due."""
        now = now_ms()
        self.timeline.compact(now)
        self.traces.expire(now)
        assert self._wal is not None
        due_by_time = asyncio.get_running_loop().time() - self._last_snapshot_s >= self.settings_all.snapshot_interval_s
        due_by_size = self._wal.bytes_written >= self.settings_all.snapshot_wal_bytes
        idle = self._snapshotting is None or self._snapshotting.done()
        if (due_by_time or due_by_size) and idle and self._failure is None:
            self._snapshotting = asyncio.create_task(self._snapshot())

    async def _snapshot(self) -> None:
        """Rotate the log and capture state in one step, then write the snapshot off the loop."""
        assert self._wal is not None
        seq = self._wal.rotate()
        payload = _snapshot_encoder.encode(
            _Snapshot(SNAPSHOT_VERSION, seq, self.span_total, self.timeline.snapshot(), list(self.traces.spans()))
        )
        self._last_snapshot_s = asyncio.get_running_loop().time()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._write_snapshot, seq, payload)
        except OSError as exc:
            log.error("snapshot failed (the log is kept, nothing is lost): %s", exc)
            return
        self._wal.drop_before(seq)

    def _write_snapshot(self, seq: int, payload: bytes) -> None:
        final = self.data_dir / f"snapshot-{seq:012d}.bin"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self.data_dir.glob("snapshot-*.bin"):
            if old != final:
                old.unlink(missing_ok=True)

    def _load_snapshot(self) -> int:
        """Load the newest readable snapshot; returns the first WAL segment to replay after it."""
        for path in sorted(self.data_dir.glob("snapshot-*.bin"), reverse=True):
            try:
                snapshot = _snapshot_decoder.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError) as exc:
                log.error("ignoring unreadable snapshot %s: %s", path.name, exc)
                continue
            if snapshot.version != SNAPSHOT_VERSION:
                log.error("ignoring snapshot %s of unknown version %d", path.name, snapshot.version)
                continue
            self.timeline.restore(snapshot.timeline)
            for span in snapshot.spans:
                self.traces.add(span)
            self.span_total = snapshot.span_total
            return snapshot.wal_seq
        return 0
