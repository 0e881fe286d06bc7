"""The embedded store: aggregates and traces in memory, made durable by a WAL plus snapshots.

Without a data directory (``EmbeddedStore(None)``, the SDK's in-process mode) it is memory-only: no log, no
snapshots, nothing survives the process; ``ingest`` applies the batch at once (idempotency keys still apply).
Otherwise:

``ingest`` queues the batch on the write-ahead log; the log applies it to memory only once it is fsync'd, and
then ``ingest`` returns — so a 202 means "on disk", and a batch answered 503 was never counted. Snapshots are
taken under the log's lock at a segment boundary (state and log position agree), sealed with a CRC32, written
atomically and read back before anything older is let go: the previous snapshot generation and every segment
since it stay on disk, so one bad snapshot costs nothing. Recovery = newest intact snapshot + replay of later
segments; a damaged snapshot or segment is moved to ``quarantine/`` and reported (``health().degraded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from tokentrace.api.stores import heap
from tokentrace.api.stores.base import StoreHealth, StoreUnavailable
from tokentrace.api.stores.fsio import FileSystem, fsync_dir
from tokentrace.api.stores.quarantine import Damage, Quarantine
from tokentrace.api.stores.records import decode_record, wire_record
from tokentrace.api.stores.sliced import query_each
from tokentrace.api.stores.snapshot_file import DamagedFile, open_snapshot, seal_snapshot
from tokentrace.api.stores.wal import WriteAheadLog
from tokentrace.config import Config, milliseconds, timeline_settings
from tokentrace.core import native
from tokentrace.core.buckets import SEP, Projection
from tokentrace.core.codec import encode_wire
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span, span_time_ms
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import (
    FLUSH_FROM,
    FrozenTimelineSnapshot,
    LifetimeParts,
    Timeline,
    TimelineSettings,
    TimelineSnapshot,
)
from tokentrace.core.traces import TraceFilter, TraceIndex

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = ["SNAPSHOT_VERSION", "EmbeddedSettings", "EmbeddedStore", "read_snapshot"]

log = logging.getLogger(__name__)
SNAPSHOT_VERSION = 1
_LOWEST, _HIGHEST = -(2**63), 2**63 - 1
_SPAN_BOUNDS = (MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE)
#: Batches of more spans are encoded and compiled in a thread, not on the event loop: 10k OTLP spans with their
#: attributes took 30-50 ms (a ``POST /spans`` batch is at most ``max_batch_size``, 1000 by default).
_ENCODE_INLINE_SPANS = 2_000
#: A back-fill is under way while at least ``_BACKFILL_SPANS`` spans a ``_BACKFILL_QUIET_S`` are written into
#: settled buckets (``Timeline.settled_writes``; fewer are late spans trickling in): the memos wait for its end,
#: since each of its batches makes them stale again. Chasing them took every idle moment of the event loop, and
#: each request's awaits waited for warming slices: a long back-fill into 10M spans of state fell from ~70k to
#: 2.8k spans per server CPU-second at the first maintenance pass.
_BACKFILL_SPANS = 1_000
_BACKFILL_QUIET_S = 1.0


#: The configuration's defaults: the settings below that come from ``tokentrace.yml`` default to them.
_DEFAULTS = Config()


class EmbeddedSettings(msgspec.Struct, frozen=True):
    """What the store runs with (``tokentrace.api.embedded.embedded_settings`` derives it from the config)."""

    timeline: TimelineSettings = timeline_settings(_DEFAULTS)
    max_spans: int = _DEFAULTS.storage.max_spans
    trace_retention_ms: int = _DEFAULTS.storage.trace_retention_ms
    snapshot_interval_s: float = milliseconds(_DEFAULTS.storage.snapshot_interval) / 1000
    snapshot_wal_bytes: int = 64 * 1024 * 1024
    maintenance_interval_s: float = 30.0
    #: How long an ``Idempotency-Key`` is remembered, and at most how many (the oldest are forgotten first).
    idempotency_window_ms: int = 86_400_000
    idempotency_max_keys: int = 200_000


class _Snapshot(msgspec.Struct):
    """A snapshot as read: its buckets stay frozen (``FrozenTimelineSnapshot``), so loading decodes no aggregate.

    ``timeline.memos`` was added without a version bump: older builds ignore it and read the rest as before.
    """

    version: int
    wal_seq: int
    span_total: int
    timeline: FrozenTimelineSnapshot
    spans: list[Span]
    #: Idempotency keys seen in the window -> when their batch was accepted (ms). Absent before keys existed.
    idempotency_keys: dict[str, int] = msgspec.field(default_factory=dict)


class _SnapshotOut(msgspec.Struct):
    """``_Snapshot`` as written (the same fields; live and frozen buckets encode alike)."""

    version: int
    wal_seq: int
    span_total: int
    timeline: TimelineSnapshot
    #: The trace index's spans, each its MessagePack as the index keeps it (``_Snapshot`` reads them as spans).
    spans: list[msgspec.Raw | Span]
    idempotency_keys: dict[str, int]


_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)
_snapshot_encoder = msgspec.msgpack.Encoder()


def read_snapshot(raw: bytes) -> tuple[_Snapshot, bool]:
    """A snapshot file's content and whether a checksum verified it; raises DamagedFile."""
    payload, verified = open_snapshot(raw)
    try:
        return _snapshot_decoder.decode(payload), verified
    except msgspec.DecodeError as exc:
        raise DamagedFile(f"does not decode: {exc}") from None


class EmbeddedStore:
    """One process, no external services, durable across restarts and ``kill -9`` (memory-only when
    ``data_dir`` is None)."""

    transport = "embedded"

    def __init__(
        self, data_dir: Path | None, settings: EmbeddedSettings | None = None, fs: FileSystem | None = None
    ) -> None:
        self.settings_all = settings or EmbeddedSettings()
        self.settings = self.settings_all.timeline
        self.data_dir = data_dir
        self.timeline = Timeline(self.settings)
        self.traces = TraceIndex(self.settings_all.max_spans, self.settings_all.trace_retention_ms)
        self.span_total = 0
        #: Log records skipped at recovery because they could not be applied (logged with their error).
        self.replay_failures = 0
        self._wal: WriteAheadLog | None = None
        self._fs = fs
        self.quarantine = Quarantine(data_dir) if data_dir is not None else None
        #: What recovery found damaged or missing (one line each); the WAL adds its own.
        self.damage: list[Damage] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._last_snapshot_s = 0.0
        self._snapshotting: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None
        self._settled_seen = 0  # ``Timeline.settled_writes`` at the last maintenance pass
        self._closed = False
        #: Idempotency keys of counted batches -> accepted at (ms), oldest first; and keys being written now.
        self.idempotency_keys: dict[str, int] = {}
        self._writing: dict[str, asyncio.Future[None]] = {}  # key -> the log write carrying it
        self._unusable: set[str] = set()  # snapshot files found damaged, unreadable or unknown at recovery

    # --------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        """Recover state from disk (unless memory-only) and start background maintenance."""
        if self.data_dir is not None:
            self._recover(self.data_dir)
        self.timeline.compact(now_ms())  # the hot hours from now on: what a back-fill reaches earlier is settled
        self._last_snapshot_s = asyncio.get_running_loop().time()
        self._maintenance = asyncio.create_task(self._maintain())
        self._warm_memos(attributes=False)  # a snapshot's own memos are fresh: what is missing may wait a pass

    def _recover(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        for unfinished in data_dir.glob("snapshot-*.tmp"):  # our own writes a crash cut: never relied on
            unfinished.unlink()
        snapshot_seq = self._load_snapshot()
        assert self.quarantine is not None
        self._wal = WriteAheadLog(data_dir / "wal", self.quarantine, self._fs)
        replayed = 0
        for payload in self._wal.recover(snapshot_seq):
            try:
                spans, key, at_ms = decode_record(payload)
                self.apply_recovered(spans, key, at_ms)
            except Exception:  # a record this build cannot apply must not keep the server down
                self.replay_failures += 1
                log.exception("skipping a write-ahead log record that cannot be applied")
                continue
            replayed += len(spans)
        self._wal.start()
        log.info("recovered %d spans (%d replayed from the log)", self.span_total, replayed)

    async def close(self) -> None:
        """Stop maintenance, take a final snapshot (fast restart), close the log. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        if self._snapshotting is not None:
            await asyncio.gather(self._snapshotting, return_exceptions=True)
        if self._wal is not None:
            if self._wal.failure is None:
                with contextlib.suppress(OSError):
                    await self._snapshot()
            await self._wal.close()

    # ------------------------------------------------------------------ writes
    #: ``ingest_compiled`` takes a ``POST /spans`` body compiled by ``compile_body``.
    takes_compiled = True

    async def ingest(self, spans: list[Span], idempotency_key: str | None = None) -> None:
        """Count ``spans`` once they are durable. A batch whose key was counted within the window is not
        counted again; a retry that arrives while its original is still being written waits for it."""
        if len(spans) > _ENCODE_INLINE_SPANS:
            # Before the key is checked: from that check to the log write nothing else may run on the loop.
            wire, batch = await asyncio.to_thread(self._encode, spans)
        else:
            wire, batch = self._encode(spans)
        await self._commit(spans, wire, batch, idempotency_key)

    async def ingest_compiled(self, wire: bytes, batch: WireBatch, idempotency_key: str | None = None) -> None:
        """``ingest`` of the spans ``wire`` holds (their log record, ``encode_wire``'s) and ``batch`` compiles,
        as ``compile_body`` makes them of a request body: no ``Span`` object."""
        await self._commit(None, wire, batch, idempotency_key)

    async def _commit(
        self, spans: list[Span] | None, wire: bytes, batch: WireBatch | None, idempotency_key: str | None
    ) -> None:
        """Write the batch's record (``wire``) to the log and count it once durable; ``spans`` None: ``batch``
        holds them all."""
        key = idempotency_key
        if key is not None:
            while (original := self._writing.get(key)) is not None and not original.done():
                await asyncio.wait([original])
            if key in self.idempotency_keys:
                return
        at_ms = now_ms()
        compiled = None if batch is None else (batch, wire)
        if self.data_dir is None:  # memory-only: nothing to make durable
            self._apply(spans, key, at_ms, compiled)
            return
        assert self._wal is not None, "store not opened"
        try:
            durable = self._wal.write(wire_record(wire, key, at_ms), partial(self._apply, spans, key, at_ms, compiled))
        except OSError as exc:
            raise StoreUnavailable(self._wal.failure or f"cannot write the log: {exc}") from exc
        if key is not None:  # settled with the write itself, even if this request is cancelled meanwhile
            self._writing[key] = durable
            durable.add_done_callback(lambda _: self._writing.pop(key, None))
        try:
            await durable
        except OSError as exc:
            raise StoreUnavailable(self._wal.failure or f"cannot write the log: {exc}") from exc

    def _encode(self, spans: list[Span]) -> tuple[bytes, WireBatch | None]:
        """The batch's log record payload and compiled form: any thread (the spans are the request's own).
        Both in one compiled pass over the spans when it takes them (``native.compile_spans``: the payload byte
        for byte ``encode_wire``'s, the batch ``_compile``'s of it), else one after the other."""
        compiled = native.compile_spans
        if compiled is not None and spans:
            both = compiled(spans, *self._bounds(), live=True)
            if both is not None:
                return both
        wire = encode_wire(spans)
        return wire, self._compile(wire)

    def _compile(self, wire: bytes) -> WireBatch | None:
        """The batch's compiled form (the worker's ``native.decode_batch``) for ``_apply``, when it takes it.

        The spans were checked, stamped and priced before (``prepare_batch``), so no bound applies here; they
        are counted as they are in memory (``live``: a span without a latency has none, though its stamped
        timestamps would give its decoded copy one).
        """
        decode = native.decode_batch
        if decode is None:
            return None
        return decode(wire, *self._bounds(), live=True)

    def _bounds(self) -> tuple[int | float | bool | str, ...]:
        """What ``_compile`` and ``_encode`` hand the compiled code after the batch: no time bound, no horizon,
        no price required (the spans were checked, stamped and priced before), the buckets and span limits."""
        return (_LOWEST, _HIGHEST, self.settings.bucket_ms, _LOWEST, False, *_SPAN_BOUNDS, SEP)

    def _apply(
        self,
        spans: list[Span] | None,
        key: str | None = None,
        at_ms: int = 0,
        compiled: tuple[WireBatch, bytes] | None = None,
    ) -> None:
        """Count durable ``spans``; ``compiled``, their compiled form and the message it was made from (or read
        from), does it in a few compiled calls (``spans`` None: it holds them all)."""
        timeline = self.timeline
        hours_before = timeline.hours_before(at_ms) if at_ms else None  # replayed records: folded by compact
        if compiled is not None:
            batch, wire = compiled
            timeline.add_batch(batch, hours_before)
            self.traces.add_batch(spans, batch, wire, at_ms)
            count = len(batch)
        else:  # no compiled form
            assert spans is not None, "a batch without spans is compiled"
            count = len(spans)
            timeline.add_many(spans, [span_time_ms(span) for span in spans], hours_before)
            self.traces.add_spans(spans, at_ms)
        if timeline.pending_spans > FLUSH_FROM and self._maintenance is not None:
            self._warm_memos(backfill=True)
        self.span_total += count
        if key is not None:
            keys = self.idempotency_keys
            keys[key] = at_ms
            if len(keys) > self.settings_all.idempotency_max_keys:
                del keys[next(iter(keys))]

    def apply_recovered(self, spans: list[Span], key: str | None = None, at_ms: int = 0) -> None:
        """Count ``spans`` that are durable already, writing no log: what recovery does with each record of the
        log it replays (``key`` and ``at_ms``: the record's idempotency key and acceptance time; with ``at_ms``
        0, a span older than the fine retention counts in a minute bucket the next ``Timeline.compact`` folds,
        not in its hour at once). Counted as they are: no idempotency check (a key is only recorded), no
        compiled form. Also for spans a caller keeps durable itself, and for measuring the count alone."""
        self._apply(spans, key, at_ms)

    def _expire_keys(self, now: int) -> None:
        keys, oldest = self.idempotency_keys, now - self.settings_all.idempotency_window_ms
        while keys:
            first = next(iter(keys))
            if keys[first] >= oldest:
                break
            del keys[first]

    def oldest_allowed_ms(self, now: int) -> int:
        return self.timeline.oldest_allowed_ms(now)

    # ------------------------------------------------------------------- reads
    async def query(self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]) -> Projection:
        return self.timeline.query(start_ms, end_ms, groupby, where)

    async def series(
        self, intervals: list[tuple[int, int]], groupby: str | None, where: dict[str, str]
    ) -> list[Projection]:
        return await query_each(self.timeline, intervals, groupby, where)

    async def attribute_keys(self, start_ms: int, end_ms: int) -> set[str]:
        return self.timeline.attribute_keys(start_ms, end_ms)

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
        failure = self._wal.failure if self._wal is not None else None
        return StoreHealth(failure is None, failure, self.span_total, pending, self.transport, self.degraded())

    def degraded(self) -> str | None:
        """Why the data is not whole, or None. Damage moved to quarantine counts while its file is there."""
        if self.quarantine is None:
            return None  # memory-only: no files to damage
        present = self.quarantine.files()
        found = [
            damage
            for damage in self.damage + (self._wal.damage if self._wal is not None else [])
            if damage.quarantined is None or damage.quarantined in present
        ]
        named = {damage.quarantined for damage in found}
        lines = [damage.text for damage in found]
        others = [name for name in present if name not in named]
        if others:
            lines.append(f"quarantine/ holds {', '.join(others)} from an earlier start")
        if not lines:
            return None
        return (
            "; ".join(lines)
            + f". Inspect with `tokentrace check-data {self.data_dir}`; delete the quarantined files to clear this."
        )

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
        self._expire_keys(now)
        if self._wal is None:  # memory-only: nothing to snapshot
            return
        settled, self._settled_seen = self._settled_seen, self.timeline.settled_writes
        self._warm_memos(backfilled=self._settled_seen - settled >= _BACKFILL_SPANS)
        due_by_time = asyncio.get_running_loop().time() - self._last_snapshot_s >= self.settings_all.snapshot_interval_s
        due_by_size = self._wal.bytes_written >= self.settings_all.snapshot_wal_bytes
        idle = self._snapshotting is None or self._snapshotting.done()
        if (due_by_time or due_by_size) and idle and self._wal.failure is None:
            self._snapshotting = asyncio.create_task(self._snapshot())

    def _warm_memos(self, *, backfill: bool = False, backfilled: bool = False, attributes: bool = True) -> None:
        """In the background, 20 ms at a time between requests: apply the writes back-filled into frozen buckets
        (``Timeline.flush_pending``), then compute the memos the next snapshot carries (so that the first
        long-window query after a restart reads them instead of every bucket); unless running already.

        ``backfill`` (called by a back-fill's batch): apply half of what waits and stop. The memos wait for the end
        of a back-fill (``_backfill_ended``), first when ``backfilled`` (settled buckets took ``_BACKFILL_SPANS``
        since the previous pass) and whenever one begins meanwhile: each of its batches would make them stale
        again. ``attributes`` False (at start-up): not the memos grouped by attribute keys, whose missing ones (a
        snapshot taken before they were all warmed, after a back-fill or by an older version) cost seconds of
        slices that the first queries after a restart would share the loop and the GIL with (first
        /metrics?window=30d 476 ms instead of 13 after a back-fill of 500k spans over 10M); the first maintenance
        pass warms them."""
        if self._warming is not None and not self._warming.done():
            return

        async def warm() -> None:
            timeline = self.timeline
            for _ in itertools.count() if backfill else ():
                if timeline.flush_pending(0.02, FLUSH_FROM // 2):
                    heap.trim()  # the buckets' old bytes
                    return
                await asyncio.sleep(0)  # let requests in between slices
            settled = await self._backfill_ended() if backfilled else timeline.settled_writes
            for _ in itertools.count():
                if timeline.settled_writes - settled >= _BACKFILL_SPANS:
                    settled = await self._backfill_ended()
                elif timeline.flush_pending(0.02) and (
                    self.data_dir is None or timeline.warm_memos(0.02, attributes=False)
                ):
                    break
                await asyncio.sleep(0)  # let requests in between slices
            # Then the attribute keys' memos, at half the pace: seconds of slices after a back-fill, which would
            # otherwise slow every query summed in a thread meanwhile (the GIL) several times over.
            for _ in itertools.count() if attributes and self.data_dir is not None else ():
                if timeline.settled_writes - settled >= _BACKFILL_SPANS:
                    settled = await self._backfill_ended()
                elif timeline.warm_memos(0.02):
                    break
                await asyncio.sleep(0.02)
            heap.trim()  # what the passes freed (bucket rewrites, decoded projections) back to the OS

        self._warming = asyncio.create_task(warm())

    async def _backfill_ended(self) -> int:
        """Return, with ``Timeline.settled_writes`` then, once fewer than ``_BACKFILL_SPANS`` spans were written
        into settled buckets over ``_BACKFILL_QUIET_S``: no back-fill is under way. Meanwhile, what waits for
        them is applied in slices past ``FLUSH_FROM``, down to half (as a back-fill's batch asks)."""
        timeline = self.timeline
        loop = asyncio.get_running_loop()
        while True:
            settled, until = timeline.settled_writes, loop.time() + _BACKFILL_QUIET_S
            while loop.time() < until:
                if timeline.pending_spans > FLUSH_FROM:
                    timeline.flush_pending(0.02, FLUSH_FROM // 2)
                    await asyncio.sleep(0)
                else:
                    await asyncio.sleep(min(0.1, max(0.0, until - loop.time())))
            if timeline.settled_writes - settled < _BACKFILL_SPANS:
                return timeline.settled_writes

    async def _snapshot(self) -> None:
        """Rotate the log and capture state under the log's lock, then write and verify the snapshot off the loop."""
        wal = self._wal
        assert wal is not None
        loop = asyncio.get_running_loop()
        async with wal.exclusive():
            try:
                seq = wal.rotate()
            except OSError as exc:
                log.error("snapshot skipped: cannot start a new log segment: %s", exc)
                return
            timeline = self.timeline.snapshot()
            timeline.memos = self.timeline.memo_records()
            payload = _snapshot_encoder.encode(
                _SnapshotOut(
                    SNAPSHOT_VERSION,
                    seq,
                    self.span_total,
                    timeline,
                    [msgspec.Raw(kept) if isinstance(kept, bytes) else kept for kept in self.traces.spans()],
                    dict(self.idempotency_keys),
                )
            )
        self._last_snapshot_s = loop.time()
        try:
            await loop.run_in_executor(None, self._write_snapshot, seq, payload)
        except OSError as exc:
            log.error("snapshot failed (the previous snapshot and the log are kept, nothing is lost): %s", exc)
            return
        except DamagedFile as exc:  # it did not read back as written: the disk is suspect
            self._quarantine_snapshot(self._snapshot_path(seq), f"read back damaged ({exc})")
            return
        previous = await loop.run_in_executor(None, self._retire_snapshots, seq)
        if previous is not None:
            wal.drop_before(previous)

    def _note(self, damage: Damage) -> None:
        self.damage.append(damage)
        log.error("damaged data: %s", damage.text)

    def _quarantine_snapshot(self, path: Path, why: str) -> None:
        assert self.quarantine is not None, "a memory-only store has no snapshots"
        try:
            moved = self.quarantine.move(path).name
        except OSError as exc:
            self._unusable.add(path.name)
            self._note(Damage(f"{path.name}: {why}; left in place ({exc})"))
        else:
            self._note(Damage(f"{path.name}: {why}; moved to quarantine/{moved}", moved))

    def _disk(self) -> Path:
        """The data directory (snapshots are taken only by a store that has one)."""
        assert self.data_dir is not None, "a memory-only store takes no snapshots"
        return self.data_dir

    def _snapshot_path(self, seq: int) -> Path:
        return self._disk() / f"snapshot-{seq:012d}.bin"

    def _write_snapshot(self, seq: int, payload: bytes) -> None:
        """Write atomically, then read it back: a snapshot counts only once its bytes verify on disk."""
        final = self._snapshot_path(seq)
        tmp = final.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(seal_snapshot(payload))
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)  # our own unfinished write: it holds nothing anyone relies on
            raise
        os.replace(tmp, final)
        fsync_dir(self._disk())
        written, _ = open_snapshot(final.read_bytes())
        if written != payload:
            raise DamagedFile(f"{final.name} reads back different from what was written")

    def _retire_snapshots(self, seq: int) -> int | None:
        """Keep the new snapshot and the one before it; returns the older one's log position (None: no older)."""
        candidates = self._disk().glob("snapshot-*.bin")
        older = sorted(p for p in candidates if p != self._snapshot_path(seq) and p.name not in self._unusable)
        if not older:
            return None
        for path in older[:-1]:
            path.unlink(missing_ok=True)
        return int(older[-1].stem.split("-")[1])

    def _load_snapshot(self) -> int:
        """Load the newest intact snapshot (quarantining damaged ones); returns the first log segment to replay.

        A snapshot that could not be used (nor moved aside) is left alone: never retired, never a generation.
        """
        for path in sorted(self._disk().glob("snapshot-*.bin"), reverse=True):
            self._unusable.add(path.name)
            try:
                snapshot, _ = read_snapshot(path.read_bytes())
            except DamagedFile as exc:
                self._quarantine_snapshot(path, str(exc))
                continue
            except OSError as exc:
                self._note(Damage(f"{path.name}: unreadable ({exc})"))
                continue
            if snapshot.version != SNAPSHOT_VERSION:
                self._note(Damage(f"{path.name}: unknown snapshot version {snapshot.version}, skipped"))
                continue
            self._unusable.discard(path.name)
            self.timeline.restore(snapshot.timeline)
            for span in snapshot.spans:
                self.traces.add(span)
            self.span_total = snapshot.span_total
            self.idempotency_keys = dict(sorted(snapshot.idempotency_keys.items(), key=lambda item: item[1]))
            return snapshot.wal_seq
        return 0
