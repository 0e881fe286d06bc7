"""Bucketed aggregates over time, with rollups that keep long-window queries cheap.

Spans count at their event time in fixed buckets (one minute by default). Buckets older than
``fine_retention`` are compacted into hour buckets; buckets older than ``retention`` retire into a
per-series lifetime total, so counters exported to Prometheus never go down. Memory is
O(buckets x groups), never O(spans).

A window query ``[start, end)`` is answered from memoised day and hour projections for the blocks it
fully covers and from single buckets at its edges; a write into a block invalidates its memo. ``query_parts``
(the server's windows, asked again and again) memoises a window's sum but for its last ``_RECENT_MS`` too,
stamped by the versions it covers, and its recent buckets' projections, each until the bucket is written.
Query results are independent of how the window is split, because merging is exact.

Memory: a bucket no write has reached for a maintenance interval is kept frozen (its encoded bytes,
tokentrace/core/frozen.py); writes into it wait and are applied in bulk; day and hour memos are frozen too.
Every cache is bounded and counted (``cache_stats``): block memos by bytes, bucket memos and settled windows by
entries and groups. A snapshot carries the fresh day and hour memos (``memo_records``; ``warm_memos`` computes
them ahead, grouped by each attribute key too), so the first long-window query after a restart, grouped by an
attribute or not, finds them instead of decoding every bucket.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, cast

import msgspec

from tokentrace.core import frozen
from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import BUILTIN_DIMENSIONS, SERIES, BucketState, Caps, Projection
from tokentrace.core.projection_memo import ProjectionMemo
from tokentrace.core.span import Span
from tokentrace.core.tiers import Fate, Tiers, hour_of, tiers_at

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = [
    "DAY_MS",
    "FLUSH_FROM",
    "HOUR_MS",
    "MINUTE_MS",
    "CacheStats",
    "FrozenMemo",
    "FrozenPart",
    "FrozenTimelineSnapshot",
    "LifetimeParts",
    "MemoRecord",
    "Part",
    "Timeline",
    "TimelineSettings",
    "TimelineSnapshot",
    "merge_parts",
    "total",
]

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


class TimelineSettings(msgspec.Struct, frozen=True):
    """Bucket size and retention, all in milliseconds."""

    bucket_ms: int = MINUTE_MS
    fine_retention_ms: int = 48 * HOUR_MS
    retention_ms: int = 30 * DAY_MS
    caps: Caps = Caps()

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0 or HOUR_MS % self.bucket_ms:
            raise ValueError("bucket must divide one hour evenly (e.g. 1m, 5m, 10s)")
        if self.fine_retention_ms > self.retention_ms:
            raise ValueError("fine retention cannot exceed retention")


class MemoRecord(msgspec.Struct, array_like=True):
    """A day or hour block's memoised projection for one query spec, as a snapshot carries it."""

    size: int
    block: int
    groupby: str | None
    where: list[tuple[str, str]]
    projection: msgspec.Raw


class TimelineSnapshot(msgspec.Struct):
    """The timeline's whole state, for snapshots and materialised views.

    ``snapshot()`` may hold frozen buckets (``msgspec.Raw``, the same bytes once encoded); decode a snapshot
    as ``FrozenTimelineSnapshot`` to keep them frozen. ``memos`` (absent before memos were persisted) are
    derived data: fresh day and hour projections of these very buckets. ``attribute_keys``: the attribute keys
    ``warm_memos`` has read in the hours (None: none read yet, or a snapshot from before they were recorded): a
    restore takes its settled hours to hold them instead of reading them again.
    """

    fine: dict[int, BucketState]
    coarse: dict[int, BucketState]
    retired: BucketState
    memos: list[MemoRecord] = msgspec.field(default_factory=list)
    attribute_keys: list[str] | None = None


class FrozenTimelineSnapshot(msgspec.Struct):
    """``TimelineSnapshot`` decoded with every bucket left as its bytes: loading costs one pass over them."""

    fine: dict[int, msgspec.Raw]
    coarse: dict[int, msgspec.Raw]
    retired: BucketState
    memos: list[MemoRecord] = msgspec.field(default_factory=list)
    attribute_keys: list[str] | None = None


class CacheStats(msgspec.Struct, frozen=True):
    """What the timeline holds and what its caches hold (all bounded)."""

    live_buckets: int
    frozen_buckets: int
    frozen_bytes: int
    block_memos: int
    block_memo_bytes: int
    bucket_memos: int
    pending_spans: int
    #: Bytes the compiled spans among them take (``frozen.Backlog.memory``).
    pending_bytes: int
    window_memos: int
    window_memo_groups: int


_QuerySpec = tuple[str | None, tuple[tuple[str, str], ...]]
#: Version-key kinds of stored buckets (day and hour blocks are keyed by their sizes).
_COARSE = -1
_FINE = -2
#: ``query_parts`` merges a window's buckets of its last this many ms one by one (late spans still reach them), and
#: memoises the rest.
_RECENT_MS = 3 * 60_000
#: Window results kept (the oldest is dropped first); windows slide once a bucket.
_WINDOW_MEMO_SIZE = 256
#: ... and at most this many groups in all of them (a groupby over thousands of series is big).
_WINDOW_MEMO_GROUPS = 4096
#: Frozen day and hour memos kept, in encoded bytes (the oldest written is dropped first).
_BLOCK_MEMO_BYTES = 48 * 2**20
#: Projections of buckets in the hot hours kept live (what the current hour's queries merge); oldest dropped first.
_BUCKET_MEMO_SIZE = 1024
#: ... and at most this many groups in all of them (a bucket by series or by caller can hold thousands).
_BUCKET_MEMO_GROUPS = 20_000
#: Spans waiting for their frozen buckets (a back-fill) before the fullest buckets take theirs at once; the store's
#: background task applies them from ``FLUSH_FROM`` on, and at each maintenance pass. A bucket's pass reads and
#: writes its bytes whole, whatever it applies (~0.2 ms for an hour of a 10M-span month): the more wait, the cheaper
#: a span. Compiled batches' spans wait as rows of 72 bytes with ids of their bucket's texts (``frozen.Backlog``:
#: ~180 bytes a span allocated, ~230 of RSS, so ~135 MiB at the bound; 300k spans took ~140 MiB as rows holding
#: copies of their texts).
_PENDING_SPANS = 600_000
FLUSH_FROM = 300_000
#: ... of which at most this many as ``Span`` objects (a batch the compiled decoder left to Python; ~1 KB each).
_PENDING_OBJECTS = 50_000
#: Specs whose day and hour memos ``warm_memos`` computes ahead, for snapshots to carry: ungrouped and by each
#: built-in dimension; by series, day memos only (what ``lifetime_parts`` reads).
_PERSISTED_SPECS: tuple[_QuerySpec, ...] = ((None, ()), *((name, ()) for name in BUILTIN_DIMENSIONS))
_SERIES_SPEC: _QuerySpec = (SERIES, ())
_Stored = BucketState | msgspec.Raw
_EMPTY = frozen.EMPTY
_first = itemgetter(0)
_third = itemgetter(2)


class Timeline:
    """Per-bucket aggregates with rollup memos and retention."""

    def __init__(self, settings: TimelineSettings | None = None) -> None:
        self.settings = settings or TimelineSettings()
        self._fine: dict[int, _Stored] = {}
        self._coarse: dict[int, _Stored] = {}
        self._retired = BucketState()
        self._versions: dict[tuple[int, int], int] = {}
        #: Day and hour memos (frozen), and their bytes in all.
        self._memo: dict[tuple[int, int, _QuerySpec], tuple[int, msgspec.Raw]] = {}
        self._memo_bytes = 0
        #: Single buckets' projections (live), keyed by the bucket's version key.
        self._bucket_memo: ProjectionMemo[tuple[int, int, _QuerySpec], int] = ProjectionMemo(
            _BUCKET_MEMO_SIZE, _BUCKET_MEMO_GROUPS
        )
        #: Windows' sums before their recent buckets, keyed by (start, stop, spec), at their ``_range_stamp``.
        self._window_memo: ProjectionMemo[tuple[int, int, _QuerySpec], tuple[int, int, int]] = ProjectionMemo(
            _WINDOW_MEMO_SIZE, _WINDOW_MEMO_GROUPS
        )
        #: Version keys of the buckets written since the last ``compact`` (those stay live through it).
        self._written: set[tuple[int, int]] = set()
        #: Buckets from here on are the hot ones: never frozen, thawed by a write (``compact`` moves it on).
        self._hot_from = 0
        #: Writes into frozen buckets before ``_hot_from``, not applied yet (a back-fill; ``_stored`` applies them in
        #: bulk): ``Span`` objects here (``_defer``), compiled batches' spans as rows in ``_backlog`` (``add_batch``,
        #: ``_queue``; made on the first compiled batch). A bucket waits for one kind at a time: a write of the other
        #: kind has what waits applied first, so that every bucket counts its spans in the order they came, as the
        #: caps require.
        self._pending: dict[tuple[int, int], list[Span]] = {}
        self._backlog: frozen.Backlog | None = None
        #: Spans waiting, of both kinds; of them, ``Span`` objects.
        self._pending_spans = 0
        self._pending_objects = 0
        self._compactions = 0
        #: Bumped whenever ``_retired`` changes; keys the memo of its projections.
        self._retired_version = 0
        self._retired_memo: dict[_QuerySpec, tuple[int, Projection]] = {}
        #: Attribute keys of each settled hour's buckets, with the hour's version they were read at (``warm_memos``).
        self._hour_keys: dict[int, tuple[int, tuple[str, ...]]] = {}
        #: ``overflowed_series`` of frozen buckets, with the version it was read at.
        self._overflowed_memo: dict[tuple[int, int], tuple[int, int]] = {}
        #: Bumped by every change; readers may cache query results while it stays the same.
        self.generation = 0
        #: Spans written so far into buckets before the hot hours (settled): a back-fill under way moves it.
        self.settled_writes = 0

    # ----------------------------------------------------------------- writes
    def add(self, span: Span, at_ms: int) -> None:
        """Count ``span`` at event time ``at_ms`` (the caller has checked it is within retention)."""
        bucket_ms = self.settings.bucket_ms
        start = at_ms - at_ms % bucket_ms
        state = self._fine.get(start)
        key = (_FINE, start)
        if state is None:
            hour = at_ms - at_ms % HOUR_MS
            state = self._coarse.get(hour)
            if state is None:
                state = self._fine[start] = BucketState()
            else:
                key = (_COARSE, hour)
        if type(state) is BucketState:
            state.add(span, self.settings.caps)
            self._written.add(key)
        elif key[1] < self._hot_from:
            self._defer(key, [span])
        else:
            self._live(key).add(span, self.settings.caps)
            self._written.add(key)
        versions = self._versions
        versions[key] = versions.get(key, 0) + 1
        self._wrote(at_ms)

    def add_many(self, spans: Sequence[Span], times: Sequence[int], hours_before: int | None = None) -> None:
        """Count each span at its event time (``times[i]`` for ``spans[i]``): the same state, versions and
        generation as ``add`` for each in order, with each bucket's spans added in one batch.

        ``hours_before`` (``hours_before(now)``): a span older than it whose minute holds nothing yet counts in its
        hour at once, as ``compact`` would fold that minute into it (a back-filled span no longer makes a minute
        bucket of its own, each with its aggregates, only for the next compaction to fold it)."""
        bucket_ms = self.settings.bucket_ms
        by_bucket: dict[int, list[Span]] = {}
        for span, at_ms in zip(spans, times, strict=True):
            start = at_ms - at_ms % bucket_ms
            members = by_bucket.get(start)
            if members is None:
                members = by_bucket[start] = []
            members.append(span)
        caps = self.settings.caps
        versions = self._versions
        for start, members in by_bucket.items():
            count = len(members)
            state, key = self._target(start, hours_before)
            if type(state) is BucketState:
                state.add_many(members, caps)
                self._written.add(key)
            elif key[1] < self._hot_from:
                self._defer(key, members)
            else:
                self._live(key).add_many(members, caps)
                self._written.add(key)
            versions[key] = versions.get(key, 0) + count
            self._wrote(start, count)

    def hours_before(self, now_ms: int) -> int:
        """The start of the hour before which ``compact(now_ms)`` keeps no minute bucket (the fine cutoff)."""
        return self.tiers(now_ms).fine_cutoff_ms

    def tiers(self, now_ms: int) -> Tiers:
        """Where the fine cutoff and the retention horizon stand at ``now_ms`` (tokentrace/core/tiers.py)."""
        return tiers_at(now_ms, self.settings.fine_retention_ms, self.settings.retention_ms)

    def _target(self, start: int, hours_before: int | None, frozen_before: int = 0) -> tuple[_Stored, tuple[int, int]]:
        """The state a span of the bucket ``start`` counts in, and its version key: its minute if it exists, else
        its hour if that exists or the minute is before ``hours_before``, else a new minute. A new bucket starting
        before ``frozen_before`` is made frozen (settled: written to in bulk, ``_defer``)."""
        state = self._fine.get(start)
        if state is not None:
            return state, (_FINE, start)
        hour = start - start % HOUR_MS
        state = self._coarse.get(hour)
        if state is not None:
            return state, (_COARSE, hour)
        if hours_before is not None and start < hours_before:
            state = self._coarse[hour] = _EMPTY if hour < frozen_before else BucketState()
            return state, (_COARSE, hour)
        state = self._fine[start] = _EMPTY if start < frozen_before else BucketState()
        return state, (_FINE, start)

    def add_batch(self, batch: WireBatch, hours_before: int | None = None) -> None:
        """``add_many`` of a compiled batch's spans (``native.decode_batch``, bucketed by this timeline's
        ``bucket_ms``) at their starts: the same state, versions and generation.

        The hot buckets' spans are counted in one compiled call. Spans of settled buckets (a back-fill: before the
        hot hours) wait as compact rows in the backlog (``frozen.Backlog``), each bucket's counted into its frozen
        bytes in one pass when it is read or flushed (``_stored``): no Python object per aggregate or span. A new
        settled bucket is made frozen.
        """
        hot_from = self._hot_from
        # A settled hour stored frozen takes all its minutes at once, unless one has a bucket of its own: queued
        # in the same compiled call once the backlog exists, unless spans wait for settled buckets as objects
        # (``_queue``: theirs first).
        backlog = self._backlog
        if backlog is None or self._pending:
            whole, rest = batch.split_settled(HOUR_MS, hot_from, self._fine, self._coarse, msgspec.Raw)
        else:
            queued, rest = backlog.add_settled(batch, _COARSE, HOUR_MS, hot_from, self._fine, self._coarse)
            whole = []
            self._queued_now(queued)
        settled: dict[tuple[int, int], tuple[list[int], int]] = {}
        others: list[tuple[int, int, int]] = []
        for _, starts, counts, places, _ in rest:
            others.extend(zip(starts, counts, places, strict=True))
        if len(rest) > 1:
            others.sort(key=_third)  # in order of first appearance, as ``add_many`` makes the buckets
        targets: list[tuple[BucketState, list[int]]] = []
        for start, count, _ in others:
            stored, key = self._target(start, hours_before, hot_from)
            if type(stored) is not BucketState and key[1] < hot_from:  # settled: frozen
                found = settled.get(key)
                if found is None:
                    settled[key] = ([start], count)
                else:
                    found[0].append(start)
                    settled[key] = (found[0], found[1] + count)
                continue
            # One target per minute: a state's spans are counted minute by minute, as ``add_many`` does.
            targets.append((stored if type(stored) is BucketState else self._live(key), [start]))
            self._counted(key, start, count)
            self._written.add(key)
        if targets:
            BucketState.add_batch_to(targets, batch, self.settings.caps)
        if whole or settled:
            self._queue(batch, whole, settled)

    def _queue(
        self,
        batch: WireBatch,
        whole: list[tuple[int, int]],
        settled: dict[tuple[int, int], tuple[list[int], int]],
    ) -> None:
        """Queue a batch's spans for settled buckets in the backlog: ``whole`` lists the hours whose spans all
        count in their hour bucket, with their spans; ``settled`` maps a bucket's key to the batch's other minutes
        counting in it and their spans. Versions (bumped by the backlog) and generation as ``_counted`` of each
        minute (a key's minutes share its hour and day)."""
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = frozen.Backlog(self.settings.caps, self._versions, HOUR_MS, DAY_MS)
        if self._pending:  # spans queued as objects for some of these buckets: theirs first
            for key in [*((_COARSE, hour) for hour, _ in whole), *settled]:
                if key in self._pending:
                    self._stored(key)
        added = 0
        if whole:
            added += backlog.add_whole(batch, _COARSE, HOUR_MS, [hour for hour, _ in whole])
        if settled:
            added += backlog.add(batch, [(kind, start, starts) for (kind, start), (starts, _) in settled.items()])
        self._queued_now(added)

    def _queued_now(self, added: int) -> None:
        """Generation and counts for ``added`` spans just queued in the backlog (their versions bumped there);
        what waits kept under its bound."""
        if added:
            self.generation += added
            self.settled_writes += added
            self._pending_spans += added
            self._bound_pending()

    def _counted(self, key: tuple[int, int], start: int, count: int) -> None:
        """Versions and generation for ``count`` spans of the bucket ``start`` counted in the state at ``key``."""
        versions = self._versions
        versions[key] = versions.get(key, 0) + count
        self._wrote(start, count)

    def replace_bucket(self, start_ms: int, state: BucketState | msgspec.Raw | None) -> None:
        """Set a minute bucket to ``state`` whole (None: drop it), for a copy of state kept elsewhere. A frozen
        ``state`` (``frozen.freeze``'s bytes) is kept as it is."""
        self._replace(self._fine, _FINE, start_ms, state)

    def replace_hour(self, hour_ms: int, state: BucketState | msgspec.Raw | None) -> None:
        """Set a compacted hour to ``state`` whole (None: drop it; bytes: kept frozen)."""
        self._replace(self._coarse, _COARSE, hour_ms, state)

    def replace_retired(self, state: BucketState) -> None:
        """Set what retired buckets counted (part of ``lifetime``)."""
        self._retired = state
        self._retired_version += 1
        self.generation += 1

    def _replace(self, table: dict[int, _Stored], kind: int, start: int, state: _Stored | None) -> None:
        dropped = self._pending.pop((kind, start), None)
        if dropped is not None:
            self._pending_spans -= len(dropped)
            self._pending_objects -= len(dropped)
        if self._backlog is not None:
            self._pending_spans -= self._backlog.discard((kind, start))
        if state is None:
            table.pop(start, None)
        else:
            table[start] = state
            if type(state) is BucketState:
                self._written.add((kind, start))
        versions = self._versions
        versions[(kind, start)] = versions.get((kind, start), 0) + 1
        self._touch(start)

    def compact(self, now_ms: int) -> None:
        """Fold buckets older than the fine retention into hours; retire those past retention."""
        self._compactions += 1
        self._hot_from = max(self._hot_from, now_ms - now_ms % HOUR_MS - HOUR_MS)
        settings = self.settings
        tiers = self.tiers(now_ms)
        moving, horizon = tiers.fine_cutoff_ms, tiers.horizon_ms
        for key in [k for k in self._fullest() if k[1] < horizon or (k[0] == _FINE and k[1] < moving)]:
            self._stored(key)  # what moves or retires takes its deferred writes along
        # Minutes past the fine cutoff fold into their hours (those past the horizon too: their hour retires).
        # In order of start: a capped merge keeps the series it meets first (``BucketState.merge``).
        for start in sorted(s for s in self._fine if tiers.fate(s, is_hour=False) is not Fate.KEEP):
            state = _thawed(self._fine.pop(start))
            hour = hour_of(start)
            target = self._live((_COARSE, hour))
            overflowed = target.overflowed + state.overflowed
            target.merge(state, settings.caps)
            if target.overflowed != overflowed:  # the caps regrouped attributes: the hour's memos are stale
                self._touch(hour)
            self._written.add((_COARSE, hour))
            self._versions[(_COARSE, hour)] = self._versions.get((_COARSE, hour), 0) + 1
        self._bucket_memo.forget(lambda k: k[0] == _FINE and k[1] < moving)
        for table, is_hour in ((self._fine, False), (self._coarse, True)):
            for start in sorted(s for s in table if tiers.fate(s, is_hour=is_hour) is Fate.RETIRE):
                self._retired.merge(_thawed(table.pop(start)), settings.caps)
                self._retired_version += 1
                self._touch(start)  # the day memo holding this bucket is stale now
        for key in [k for k in self._versions if k[1] < horizon - DAY_MS]:
            del self._versions[key]
        for memo_key in [k for k in self._memo if k[1] < horizon - DAY_MS]:
            self._memo_bytes -= len(self._memo.pop(memo_key)[1])
        self._bucket_memo.forget(lambda k: k[1] < horizon - DAY_MS)
        for hour in [h for h in self._hour_keys if h < horizon - DAY_MS]:
            del self._hour_keys[hour]  # its version is gone: a new one could start from the same count
        self._freeze_settled()

    @property
    def hot_from(self) -> int:
        """Start of the hot hours (the previous and the current hour at the last ``compact`` or ``settle``):
        buckets before it are settled, kept frozen once no write reaches them for a maintenance interval."""
        return self._hot_from

    def settle(self, now_ms: int) -> None:
        """``compact``'s freezing alone: move the hot hours on to ``now_ms``'s and freeze the settled buckets no
        write reached since the previous call. Nothing folds or retires: for a copy whose tiers are decided
        elsewhere (the Redis view's reader: the workers fold and retire, their hour and retired entries say so).
        """
        self._hot_from = max(self._hot_from, now_ms - now_ms % HOUR_MS - HOUR_MS)
        hot_from = self._hot_from
        self._bucket_memo.forget(lambda k: k[1] < hot_from)
        self._freeze_settled()

    def _freeze_settled(self) -> None:
        """Freeze every live bucket before the hot hours that no write reached since the previous ``compact``."""
        written, hot_from = self._written, self._hot_from
        for kind, table in ((_FINE, self._fine), (_COARSE, self._coarse)):
            for start, state in table.items():
                if type(state) is BucketState and start < hot_from and (kind, start) not in written:
                    table[start] = frozen.freeze(state)
        written.clear()

    def _live(self, key: tuple[int, int]) -> BucketState:
        """The stored bucket at ``key`` as a live object (its deferred writes applied, thawed, or created)."""
        table = self._fine if key[0] == _FINE else self._coarse
        state = self._stored(key)
        if state is None:
            state = table[key[1]] = BucketState()
        elif not isinstance(state, BucketState):
            state = table[key[1]] = frozen.thaw(state)
        return state

    def _defer(self, key: tuple[int, int], spans: Sequence[Span]) -> None:
        """Queue spans for a frozen bucket before the hot hours (a back-fill; ``add_batch`` queues compiled ones):
        applying them costs a pass over the bucket's bytes however few they are, so they are applied in bulk
        (``_stored``): when the bucket is read, by ``flush_pending`` (the store's background task, between
        requests), and by ``_bound_pending``."""
        queued = self._pending.get(key)
        if queued is None:
            if self._queued(key):
                self._stored(key)  # compiled spans queued before these: theirs first
            queued = self._pending[key] = []
        queued.extend(spans)
        self._pending_spans += len(spans)
        self._pending_objects += len(spans)
        self._bound_pending()

    def _bound_pending(self) -> None:
        """Once more than ``_PENDING_SPANS`` spans (or ``_PENDING_OBJECTS`` of them as objects) wait, apply them,
        the buckets with the most first, down to half."""
        if self._pending_spans > _PENDING_SPANS:
            for fullest in self._fullest(self._pending_spans - _PENDING_SPANS // 2):
                self._stored(fullest)
                if self._pending_spans <= _PENDING_SPANS // 2:
                    break
        if self._pending_objects > _PENDING_OBJECTS:
            pending = self._pending
            for fullest in sorted(pending, key=lambda k: len(pending[k]), reverse=True):
                self._stored(fullest)
                if self._pending_objects <= _PENDING_OBJECTS // 2:
                    break

    def _fullest(self, holding: int | None = None) -> list[tuple[int, int]]:
        """The keys of the buckets with writes waiting, those with the most first; with ``holding``, at least the
        first buckets holding that many writes between them (all when some wait as objects)."""
        backlog, some = self._backlog, None if self._pending or holding is None else max(holding, 0)
        waiting = [] if backlog is None else backlog.fullest(some)
        if self._pending:
            waiting.extend((len(spans), *key) for key, spans in self._pending.items())
            waiting.sort(key=_first, reverse=True)
        return [(kind, start) for _, kind, start in waiting]

    def _waiting(self, key: tuple[int, int]) -> bool:
        """Whether writes wait for the bucket at ``key``."""
        return key in self._pending or self._queued(key) > 0

    def _queued(self, key: tuple[int, int]) -> int:
        """Compiled spans waiting for the bucket at ``key`` (rows in the backlog; no call when none waits)."""
        if self._backlog is None or self._pending_spans == self._pending_objects:
            return 0
        return self._backlog.queued(key)

    @property
    def pending_spans(self) -> int:
        """Spans counted in frozen buckets' versions but not applied to their bytes yet (``flush_pending``)."""
        return self._pending_spans

    def flush_pending(self, budget_s: float | None = None, keep: int = 0) -> bool:
        """Apply deferred writes, the buckets with the most first, for ``budget_s`` at most (None: no limit),
        until at most ``keep`` spans wait; True once there."""
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        for key in self._fullest(self._pending_spans - keep):
            if self._pending_spans <= keep:
                break
            self._stored(key)
            if deadline is not None and time.perf_counter() > deadline:
                break
        return self._pending_spans <= keep

    def _stored(self, key: tuple[int, int]) -> _Stored | None:
        """The stored bucket at ``key`` with its deferred writes applied (a frozen one stays frozen)."""
        table = self._fine if key[0] == _FINE else self._coarse
        queued = self._queued(key)
        if queued:
            backlog = self._backlog
            assert backlog is not None
            state = table[key[1]]
            if isinstance(state, BucketState):  # thawed meanwhile: counted on its bytes all the same
                table[key[1]] = frozen.thaw(backlog.count_into(key, frozen.freeze(state)))
            else:
                table[key[1]] = backlog.count_into(key, state)
            self._pending_spans -= queued
        elif (spans := self._pending.pop(key, None)) is not None:
            self._pending_spans -= len(spans)
            self._pending_objects -= len(spans)
            state = table[key[1]]
            if isinstance(state, BucketState):
                state.add_many(spans, self.settings.caps)
            else:
                table[key[1]] = frozen.add_many(state, spans, self.settings.caps)
        return table.get(key[1])

    def _flush_all(self) -> None:
        self.flush_pending()

    def oldest_allowed_ms(self, now_ms: int) -> int:
        """Start of the oldest bucket still kept: spans before it are outside retention."""
        return self.tiers(now_ms).horizon_ms

    def _wrote(self, at_ms: int, count: int = 1) -> None:
        """``_touch`` for ``count`` spans written at ``at_ms``, counted in ``settled_writes`` when it is settled."""
        self._touch(at_ms, count)
        if at_ms < self._hot_from:
            self.settled_writes += count

    def _touch(self, at_ms: int, changes: int = 1) -> None:
        self.generation += changes
        versions = self._versions
        for size in (DAY_MS, HOUR_MS):
            key = (size, at_ms - at_ms % size)
            versions[key] = versions.get(key, 0) + changes

    # ------------------------------------------------------------------ reads
    def window_start(self, now_ms: int, window_ms: int) -> int:
        """Start of a window of ``window_ms`` ending with the bucket that holds ``now_ms``.

        The window is whole buckets: the current one and the ``ceil(window / bucket) - 1`` before it.
        """
        bucket_ms = self.settings.bucket_ms
        buckets = max(1, -(-window_ms // bucket_ms))
        return now_ms - now_ms % bucket_ms - (buckets - 1) * bucket_ms

    def window_end(self, now_ms: int) -> int:
        """Exclusive end of any window at ``now_ms``: the end of the current bucket."""
        bucket_ms = self.settings.bucket_ms
        return now_ms - now_ms % bucket_ms + bucket_ms

    def query(
        self,
        start_ms: int,
        end_ms: int,
        groupby: str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> Projection:
        """Aggregates of the spans counted in ``[start_ms, end_ms)``, grouped and filtered."""
        spec: _QuerySpec = (groupby, tuple(sorted((where or {}).items())))
        out: Projection = {}
        # Nothing older than the retention is stored: a longer window must not walk empty centuries.
        start_ms = max(start_ms, end_ms - self.settings.retention_ms - 2 * DAY_MS)
        cut = end_ms - end_ms % HOUR_MS
        if cut - start_ms >= 2 * HOUR_MS:
            # Everything before the current hour rarely changes: merge it once, reuse it while no write lands in
            # it, and merge only the current hour's buckets per query. Not every window: ``/metrics/series`` asks
            # for hundreds of short ones, each once (``query_parts``, for windows asked again, memoises more).
            _merge_projection(out, self._settled(start_ms, cut, spec))
            start_ms = cut
        self._collect(start_ms, end_ms, spec, out, (DAY_MS, HOUR_MS))
        return out

    def _split(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """A window's start (bounded as ``query`` bounds it) and where its recent buckets begin: the last
        ``_RECENT_MS`` of it, which late spans still reach. What comes before rarely changes: ``query_parts``
        memoises its sum while no write lands in it (``_range_stamp``) and merges only the recent buckets."""
        start_ms = max(start_ms, end_ms - self.settings.retention_ms - 2 * DAY_MS)
        bucket_ms = self.settings.bucket_ms
        recent = end_ms - max(_RECENT_MS, bucket_ms)
        recent -= recent % bucket_ms
        return start_ms, max(start_ms, recent)

    def _range_stamp(self, start: int, stop: int) -> tuple[int, int, int]:
        """Changes whenever a bucket counted in ``[start, stop)`` is written, replaced, folded or retired: versions
        only grow, so their sum moves with any of them; whole hours by their hour's version, the hour ``stop`` cuts
        bucket by bucket (the current minute's writes bump its hour, not the minutes before)."""
        versions = self._versions
        tail = max(start, stop - stop % HOUR_MS)
        first_hour = start - start % HOUR_MS
        hours = sum(versions.get((HOUR_MS, h), 0) for h in range(first_hour, tail, HOUR_MS))
        bucket_ms = self.settings.bucket_ms
        first = tail + (-tail) % bucket_ms
        buckets = sum(versions.get((_FINE, s), 0) for s in range(first, stop, bucket_ms))
        if tail < stop and tail % HOUR_MS == 0:  # a compacted hour counts where it starts
            buckets += versions.get((_COARSE, tail), 0)
        return self._compactions, hours, buckets

    def _settled(self, start: int, cut: int, spec: _QuerySpec) -> Projection:
        stamp = self._range_stamp(start, cut)
        key = (start, cut, spec)
        cached = self._window_memo.get(key, stamp)
        if cached is not None:
            return cached
        projection: Projection = {}
        self._collect(start, cut, spec, projection, (DAY_MS, HOUR_MS))
        self._window_memo.put(key, stamp, projection)
        return projection

    def lifetime(self, groupby: str | None = None) -> Projection:
        """Everything ever counted, including retired buckets (for monotonic counters)."""
        out = self._retired.project(groupby, {})
        starts = list(self._fine) + list(self._coarse)
        if starts:
            first = min(starts)
            first -= first % DAY_MS
            last = max(starts) + HOUR_MS
            _merge_projection(out, self.query(first, last, groupby))
        return out

    def overflowed_series(self) -> int:
        """Spans every stored bucket and the retired totals counted in the overflow series because of the
        per-bucket series cap (``BucketState.overflowed_series``): ``tokentrace_folded_labels_total{label="series"}``
        of the spans the workers capped. Only grows: a bucket's count only grows, and folding into hours and
        retiring carries it along. A frozen bucket's count is read once per version of it."""
        total = self._retired.overflowed_series
        memo, versions = self._overflowed_memo, self._versions
        for kind, table in ((_FINE, self._fine), (_COARSE, self._coarse)):
            for start, state in table.items():
                if type(state) is BucketState:
                    total += state.overflowed_series
                    continue
                key = (kind, start)
                version = versions.get(key, 0)
                cached = memo.get(key)
                if cached is None or cached[0] != version or self._waiting(key):
                    cached = memo[key] = (version, frozen.overflowed_series(cast(msgspec.Raw, state)))
                total += cached[1]
        for key in [k for k in memo if (self._fine if k[0] == _FINE else self._coarse).get(k[1]) is None]:
            del memo[key]
        return total

    def lifetime_parts(self, groupby: str | None = None) -> LifetimeParts:
        """``lifetime`` as projections still to be summed (``LifetimeParts.total``), none of which anything
        changes afterwards: memoised projections of the retired totals and of unchanged buckets, the frozen
        memos of unchanged days and hours, and frozen buckets (the buckets written since: what their projection
        reads, encoded). Gathering them is cheap (no projection is made or decoded: ~2 ms for 10k series written
        since, where projecting them took 40-70 ms); decoding and summing them, which for 10k series took
        seconds, can run in another thread while this timeline goes on changing.

        A stale day or hour before the newest hour with data is summed as a ``build`` too, whose result
        ``LifetimeParts.install`` memoises (back on this timeline's thread), so the next call takes it whole.
        """
        spec: _QuerySpec = (groupby, ())
        cached = self._retired_memo.get(spec)
        if cached is None or cached[0] != self._retired_version:
            cached = self._retired_memo[spec] = (self._retired_version, self._retired.project(groupby, {}))
        out = LifetimeParts([cached[1]], [], self)
        starts = list(self._fine) + list(self._coarse)
        if starts:
            newest = max(starts)
            first = min(starts)
            first -= first % DAY_MS
            last = newest + HOUR_MS
            first = max(first, last - self.settings.retention_ms - 2 * DAY_MS)  # as ``query`` bounds it
            self._parts(first, last, spec, out, (DAY_MS, HOUR_MS), newest - newest % HOUR_MS)
        return out

    def _parts(
        self, start: int, end: int, spec: _QuerySpec, out: LifetimeParts, sizes: tuple[int, ...], hot: int | None
    ) -> None:
        """``_collect`` that lists projections instead of merging them. A block whose memo is stale is gone
        into (its parts listed); before ``hot`` (settled), as a build of its memo. ``hot`` None: no builds."""
        if start >= end:
            return
        if not sizes:
            out.parts.extend(self._bucket_part(key, state, spec) for key, state in self._states_between(start, end))
            return
        size, finer = sizes[0], sizes[1:]
        first_block = start - start % size
        if first_block < start:
            first_block += size
        if first_block + size > end:
            self._parts(start, end, spec, out, finer, hot)
            return
        self._parts(start, first_block, spec, out, finer, hot)
        block = first_block
        while block + size <= end:
            version = self._versions.get((size, block))
            if version is not None:
                memo = self._memo.get((size, block, spec))
                if memo is not None and memo[0] == version:
                    out.parts.append(FrozenMemo(memo[1]))  # decoded where the parts are summed
                elif hot is not None and block + size <= hot:
                    inner = LifetimeParts([], [], self)
                    self._parts(block, block + size, spec, inner, finer, None)
                    out.builds.append(_Build((size, block), spec, version, inner.parts))
                else:
                    self._parts(block, block + size, spec, out, finer, hot)
            block += size
        self._parts(block, end, spec, out, finer, hot)

    def query_parts(
        self, start_ms: int, end_ms: int, groupby: str | None = None, where: Mapping[str, str] | None = None
    ) -> LifetimeParts:
        """``query`` as parts to be summed in another thread (``LifetimeParts.total``), as ``lifetime_parts``:
        the window before its recent buckets whole when its memo is fresh, else as a build of it from its days,
        hours and buckets (whose projections ``LifetimeParts.install`` memoises too); then the recent buckets."""
        spec: _QuerySpec = (groupby, tuple(sorted((where or {}).items())))
        out = LifetimeParts([], [], self, buckets=True)
        start_ms, recent = self._split(start_ms, end_ms)
        if recent > start_ms:
            key = (start_ms, recent, spec)
            stamp = self._range_stamp(start_ms, recent)
            cached = self._window_memo.get(key, stamp)
            if cached is not None:
                out.parts.append(cached)
            else:
                inner = LifetimeParts([], [], self, buckets=True)
                self._parts(start_ms, recent, spec, inner, (DAY_MS, HOUR_MS), recent - recent % HOUR_MS)
                out.window = _WindowBuild(key, stamp, inner)
        self._parts(recent, end_ms, spec, out, (DAY_MS, HOUR_MS), None)
        return out

    def install_window(self, window: _WindowBuild) -> None:
        """Memoise a window ``query_parts`` built, unless it was written since."""
        start, stop, _ = window.key
        stamp = self._range_stamp(start, stop)
        if window.result is None or stamp != window.stamp:
            return
        self._window_memo.put(window.key, stamp, window.result)

    def install(self, builds: Iterable[_Build]) -> None:
        """Memoise the blocks ``builds`` summed, unless written since they were listed."""
        for build in builds:
            if build.result is not None and self._versions.get(build.block) == build.version:
                self._remember_block(build.block[0], build.block[1], build.spec, build.version, build.result)

    def _collect(self, start: int, end: int, spec: _QuerySpec, out: Projection, sizes: tuple[int, ...]) -> None:
        if start >= end:
            return
        if not sizes:
            for key, state in self._states_between(start, end):
                _merge_projection(out, self._bucket_projection(key, state, spec))
            return
        size, finer = sizes[0], sizes[1:]
        first_block = start - start % size
        if first_block < start:
            first_block += size
        if first_block + size > end:
            self._collect(start, end, spec, out, finer)
            return
        self._collect(start, first_block, spec, out, finer)
        block = first_block
        while block + size <= end:
            _merge_projection(out, self._block(size, block, spec, finer))
            block += size
        self._collect(block, end, spec, out, finer)

    def _block(self, size: int, block: int, spec: _QuerySpec, finer: tuple[int, ...]) -> Projection:
        version = self._versions.get((size, block))
        if version is None:
            return {}
        cached = self._block_memo(size, block, spec, version)
        if cached is not None:
            return cached
        projection: Projection = {}
        self._collect(block, block + size, spec, projection, finer)
        self._remember_block(size, block, spec, version, projection)
        return projection

    def _block_memo(self, size: int, block: int, spec: _QuerySpec, version: int) -> Projection | None:
        """A new copy of the block's memo if it is fresh at ``version``."""
        cached = self._memo.get((size, block, spec))
        if cached is None or cached[0] != version:
            return None
        return frozen.thaw_projection(cached[1])

    def _remember_block(self, size: int, block: int, spec: _QuerySpec, version: int, result: Projection) -> None:
        self._remember_frozen((size, block, spec), version, frozen.freeze_projection(result))

    def _remember_frozen(self, key: tuple[int, int, _QuerySpec], version: int, raw: msgspec.Raw) -> None:
        memo = self._memo
        old = memo.pop(key, None)
        if old is not None:
            self._memo_bytes -= len(old[1])
        while memo and self._memo_bytes + len(raw) > _BLOCK_MEMO_BYTES:
            self._memo_bytes -= len(memo.pop(next(iter(memo)))[1])
        memo[key] = (version, raw)
        self._memo_bytes += len(raw)

    def _bucket_part(self, key: tuple[int, int], state: _Stored, spec: _QuerySpec) -> Part:
        """A bucket's projection as a part to sum in another thread: its memo when fresh, else a ``FrozenPart`` of
        its bytes (a settled bucket's own; what the projection reads of a live one, encoded now, ~20x cheaper
        than projecting it here), projected where the parts are summed, one at a time."""
        version = self._versions.get(key, 0)
        cached = self._bucket_memo.get((key[0], key[1], spec), version)
        if cached is not None:
            return cached
        if self._waiting(key):
            state = self._stored(key) or BucketState()
        raw = frozen.freeze_for(state, spec[0], dict(spec[1])) if isinstance(state, BucketState) else state
        if key[1] >= self._hot_from:  # memoised by ``install`` once projected, as ``_bucket_projection`` does
            return BucketPart(raw, spec[0], spec[1], key, version)
        return FrozenPart(raw, spec[0], spec[1])

    def _bucket_projection(self, key: tuple[int, int], state: _Stored, spec: _QuerySpec) -> Projection:
        """One stored bucket's projection, memoised until that bucket is written again."""
        version = self._versions.get(key, 0)
        memo_key = (key[0], key[1], spec)
        cached = self._bucket_memo.get(memo_key, version)
        if cached is not None:
            return cached
        if self._waiting(key):
            state = self._stored(key) or BucketState()
        if isinstance(state, BucketState):
            projection = state.project(spec[0], dict(spec[1]))
        else:
            projection = frozen.project(state, spec[0], dict(spec[1]))
        self._remember_bucket(memo_key, version, projection)
        return projection

    def _remember_bucket(self, memo_key: tuple[int, int, _QuerySpec], version: int, projection: Projection) -> None:
        if memo_key[1] < self._hot_from:  # older buckets are read through their hour's memo, not one by one
            self._bucket_memo.pop(memo_key)
        else:
            self._bucket_memo.put(memo_key, version, projection)

    def install_buckets(self, parts: Iterable[Part]) -> None:
        """Memoise the projections of the hot buckets among ``parts`` made where they were summed, unless written
        since: the current hour's buckets are projected once per version, not once per query."""
        versions = self._versions
        for part in parts:
            if type(part) is BucketPart and part.result is not None and versions.get(part.key, 0) == part.version:
                self._remember_bucket((part.key[0], part.key[1], (part.groupby, part.where)), part.version, part.result)

    def attribute_keys(self, start_ms: int, end_ms: int) -> set[str]:
        """Attribute keys grouped in any bucket counted in ``[start_ms, end_ms)`` (what ``groupby`` can name)."""
        start_ms = max(start_ms, end_ms - self.settings.retention_ms - 2 * DAY_MS)
        keys: set[str] = set()
        for key, state in list(self._states_between(start_ms, end_ms)):
            if self._waiting(key):
                state = self._stored(key) or BucketState()
            keys.update(state.attributes if isinstance(state, BucketState) else frozen.attribute_keys(state))
        return keys

    def _states_between(self, start: int, end: int) -> Iterable[tuple[tuple[int, int], _Stored]]:
        """Stored buckets starting in ``[start, end)`` with their version keys."""
        bucket_ms = self.settings.bucket_ms
        fine = self._fine
        coarse = self._coarse
        if len(fine) < (end - start) // bucket_ms:
            yield from (((_FINE, s), state) for s, state in fine.items() if start <= s < end)
        else:
            for s in range(start - start % bucket_ms, end, bucket_ms):
                if s >= start and (state := fine.get(s)) is not None:
                    yield (_FINE, s), state
        # Compacted hours count where they start (their resolution is one hour).
        first_hour = start - start % HOUR_MS
        if first_hour < start:
            first_hour += HOUR_MS
        for hour in range(first_hour, end, HOUR_MS):
            if (state := coarse.get(hour)) is not None:
                yield (_COARSE, hour), state

    # ------------------------------------------------------------ persistence
    def snapshot(self) -> TimelineSnapshot:
        """The buckets as stored (frozen ones as their bytes: encoding writes them as they are) and the attribute
        keys ``warm_memos`` knows; no memos (``memo_records`` lists them)."""
        self._flush_all()
        fine = cast(dict[int, BucketState], self._fine)
        coarse = cast(dict[int, BucketState], self._coarse)
        return TimelineSnapshot(fine=fine, coarse=coarse, retired=self._retired, attribute_keys=self._known_keys())

    def _known_keys(self) -> list[str] | None:
        """The attribute keys ``warm_memos`` has read in the stored hours (None: it has read none). Some hours may
        be unread or changed since (a snapshot is often taken while the maintenance pass's warming is under way):
        a key only they hold is read again once they change after the restart."""
        versions = self._versions
        read = [keys for hour, (_, keys) in self._hour_keys.items() if (HOUR_MS, hour) in versions]
        return sorted({name for keys in read for name in keys}) if read else None

    def memo_records(self) -> list[MemoRecord]:
        """The fresh day and hour memos, for a snapshot (``warm_memos`` computes those of ``_PERSISTED_SPECS`` and
        of the attribute keys ahead; others are there once queried). A fresh memo is the projection of the buckets as they are:
        compaction touches an hour whose attribute groups its caps change."""
        versions = self._versions
        return [
            MemoRecord(size, block, spec[0], list(spec[1]), raw)
            for (size, block, spec), (version, raw) in self._memo.items()
            if versions.get((size, block)) == version
        ]

    def warm_memos(self, budget_s: float | None = None, attributes: bool = True) -> bool:
        """Compute the missing memos a snapshot should carry, newest blocks first, for ``budget_s`` seconds at
        most (None: all); True once none is missing. Only settled blocks (before the hot hours): the hour and day
        memos of ``_PERSISTED_SPECS``, and the day memos by series (what ``lifetime_parts`` reads); then, unless
        ``attributes`` is False, those grouped by each attribute key of the settled hours (``_warm_attributes``).

        Stops (True) once the day and hour memos fill half their byte budget, so warming never evicts them.
        """
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        versions = self._versions
        days = sorted({block for size, block in versions if size == DAY_MS}, reverse=True)
        for day in days:
            for spec in _PERSISTED_SPECS:
                stop = self._warm_day(day, spec, deadline)
                if stop is not None:
                    return stop
            if day + DAY_MS <= self._hot_from and not self._fresh(DAY_MS, day, _SERIES_SPEC):
                if self._memo_bytes > _BLOCK_MEMO_BYTES // 2:
                    return True
                projection: Projection = {}
                self._collect(day, day + DAY_MS, _SERIES_SPEC, projection, ())
                self._remember_block(DAY_MS, day, _SERIES_SPEC, versions[(DAY_MS, day)], projection)
                if deadline is not None and time.perf_counter() > deadline:
                    return False
        return not attributes or self._warm_attributes(days, deadline)

    def _warm_attributes(self, days: list[int], deadline: float | None) -> bool:
        """``warm_memos`` for the specs grouped by an attribute key (``groupby=workflow``): without them the first
        such query after a restart decodes that key in every bucket of its window (seconds for 30 days of 10M
        spans). One key at a time, the keys most settled hours hold first, at most ``max_attribute_keys`` of
        them: under the byte budget, some keys whole beat every key in part (a window missing one block's memo
        still decodes that block's buckets)."""
        names = self._attribute_names(deadline)
        if names is None:
            return False
        for name in names[: self.settings.caps.max_attribute_keys]:
            for day in days:
                stop = self._warm_day(day, (name, ()), deadline)
                if stop is not None:
                    return stop
        return True

    def _attribute_names(self, deadline: float | None) -> list[str] | None:
        """The attribute keys of the settled hours, those more hours hold first (then by name); None when past
        ``deadline`` before all were read. Each hour's keys are read once per version of it (``_hour_keys``):
        reading them skips over every aggregate of its buckets (0.24 s for all 719 hours of bench/metrics_query.py's
        10M-span state, once after a restart; then only the hours that settle or change)."""
        hot_from = self._hot_from
        versions = self._versions
        known = self._hour_keys
        for hour in [h for h in known if (HOUR_MS, h) not in versions]:
            del known[hour]
        held: dict[str, int] = {}
        for (size, hour), version in versions.items():
            if size != HOUR_MS or hour >= hot_from:
                continue
            cached = known.get(hour)
            if cached is None or cached[0] != version:
                cached = known[hour] = (version, tuple(sorted(self.attribute_keys(hour, hour + HOUR_MS))))
                if deadline is not None and time.perf_counter() > deadline:
                    return None  # the next call reads on from here
            for name in cached[1]:
                held[name] = held.get(name, 0) + 1
        return sorted(held, key=lambda name: (-held[name], name))

    def _warm_day(self, day: int, spec: _QuerySpec, deadline: float | None) -> bool | None:
        """Memoise ``spec``'s missing settled hours of ``day``, then the day if it is settled: None once done (go
        on); True when the memos fill half their byte budget; False when past ``deadline``."""
        hot_from = self._hot_from
        settled = day + DAY_MS <= hot_from
        if settled and self._fresh(DAY_MS, day, spec):
            return None
        versions = self._versions
        for hour in range(day, min(day + DAY_MS, hot_from), HOUR_MS):
            if (HOUR_MS, hour) in versions and not self._fresh(HOUR_MS, hour, spec):
                if self._memo_bytes > _BLOCK_MEMO_BYTES // 2:
                    return True
                self._block(HOUR_MS, hour, spec, ())
                if deadline is not None and time.perf_counter() > deadline:
                    return False
        if settled:
            self._block(DAY_MS, day, spec, (HOUR_MS,))
        return None

    def _fresh(self, size: int, block: int, spec: _QuerySpec) -> bool:
        cached = self._memo.get((size, block, spec))
        return cached is not None and cached[0] == self._versions.get((size, block))

    def restore(self, snapshot: TimelineSnapshot | FrozenTimelineSnapshot) -> None:
        """Take the snapshot's state (its frozen buckets stay frozen, copied out of the snapshot's buffer) and
        the memos it carries."""
        self._fine = {start: _own(state) for start, state in snapshot.fine.items()}
        self._coarse = {start: _own(state) for start, state in snapshot.coarse.items()}
        self._retired = snapshot.retired
        self._retired_version += 1
        self._versions.clear()
        self._memo.clear()
        self._memo_bytes = 0
        self._hour_keys.clear()
        self._bucket_memo.clear()
        self._window_memo.clear()
        self._written.clear()
        self._pending.clear()
        self._pending_spans = 0
        self._pending_objects = 0
        if self._backlog is not None:
            self._backlog.clear()
        newest = max([*self._fine, *self._coarse], default=0)
        self._hot_from = newest - newest % HOUR_MS - HOUR_MS
        self._compactions += 1
        for start in self._fine:
            self._versions[(_FINE, start)] = 1
            self._touch(start)
        for start in self._coarse:
            self._versions[(_COARSE, start)] = 1
            self._touch(start)
        for record in snapshot.memos:
            version = self._versions.get((record.size, record.block))
            spec: _QuerySpec = (record.groupby, tuple((key, value) for key, value in record.where))
            if record.size in (DAY_MS, HOUR_MS) and version is not None:
                self._remember_frozen((record.size, record.block, spec), version, record.projection.copy())
        if snapshot.attribute_keys is not None:
            # Not read again: a restart would spend its first seconds re-reading every hour's keys beside its first
            # queries. An hour that settles or changes afterwards is read.
            known = tuple(snapshot.attribute_keys)
            self._hour_keys = {
                block: (v, known)
                for (size, block), v in self._versions.items()
                if size == HOUR_MS and block < self._hot_from
            }

    def cache_stats(self) -> CacheStats:
        """Counts of live and frozen buckets and of what each memo holds."""
        stored = [*self._fine.values(), *self._coarse.values()]
        frozen_states = [len(state) for state in stored if not isinstance(state, BucketState)]
        return CacheStats(
            live_buckets=len(stored) - len(frozen_states),
            frozen_buckets=len(frozen_states),
            frozen_bytes=sum(frozen_states),
            block_memos=len(self._memo),
            block_memo_bytes=self._memo_bytes,
            bucket_memos=len(self._bucket_memo),
            pending_spans=self._pending_spans,
            pending_bytes=0 if self._backlog is None else self._backlog.memory(),
            window_memos=len(self._window_memo),
            window_memo_groups=self._window_memo.groups,
        )


def _own(state: _Stored) -> _Stored:
    """A frozen bucket as bytes of its own (not a view pinning a whole snapshot file), or the live bucket."""
    return state if isinstance(state, BucketState) else state.copy()


def _thawed(state: _Stored) -> BucketState:
    return state if isinstance(state, BucketState) else frozen.thaw(state)


def _merge_projection(into: Projection, other: Projection) -> None:
    for group, aggregate in other.items():
        mine = into.get(group)
        if mine is None:
            into[group] = aggregate.copy()
        else:
            mine.merge(aggregate)


@dataclass(frozen=True)
class FrozenPart:
    """A frozen bucket's projection still to be made (``project``): its bytes never change, so any thread may."""

    raw: msgspec.Raw
    groupby: str | None
    where: tuple[tuple[str, str], ...]

    def project(self) -> Projection:
        return frozen.project(self.raw, self.groupby, dict(self.where))


@dataclass(frozen=True)
class FrozenMemo:
    """A day or hour memo still to be decoded (``project``): its bytes never change, so any thread may."""

    raw: msgspec.Raw

    def project(self) -> Projection:
        return frozen.thaw_projection(self.raw)


@dataclass
class BucketPart:
    """A hot bucket's ``FrozenPart`` whose projection, once made (in any thread), ``LifetimeParts.install`` memoises
    for the bucket's ``version`` (``result`` is only ever read there, after the sum)."""

    raw: msgspec.Raw
    groupby: str | None
    where: tuple[tuple[str, str], ...]
    key: tuple[int, int]
    version: int
    result: Projection | None = None

    def project(self) -> Projection:
        result = self.result = frozen.project(self.raw, self.groupby, dict(self.where))
        return result


#: One of the projections ``LifetimeParts`` sums.
Part = Projection | FrozenPart | FrozenMemo | BucketPart


def _projection(part: Part) -> Projection:
    return part if isinstance(part, dict) else part.project()


@dataclass
class _Build:
    """A stale settled block to memoise: its parts, summed off the timeline's thread into ``result``."""

    block: tuple[int, int]
    spec: _QuerySpec
    version: int
    parts: list[Part]
    result: Projection | None = None


@dataclass
class _WindowBuild:
    """A stale window memo (``query_parts``'s of everything before the recent buckets), built from ``parts``."""

    key: tuple[int, int, _QuerySpec]
    stamp: tuple[int, int, int]
    parts: LifetimeParts
    result: Projection | None = None


@dataclass
class LifetimeParts:
    """``Timeline.lifetime_parts`` or ``query_parts``: ``total`` may run in any thread; ``install`` then on the
    timeline's (its event loop)."""

    parts: list[Part]
    builds: list[_Build]
    timeline: Timeline
    window: _WindowBuild | None = None
    #: Whether ``install`` memoises the hot buckets' projections made in ``total`` (a window's, asked again and
    #: again; not the lifetime's by series, thousands of groups a bucket, which a scrape reads once a bucket).
    buckets: bool = False

    def total(self) -> Projection:
        """The projection: a new one, sharing nothing with the timeline."""
        for build in self.builds:
            build.result = merge_parts(build.parts)
        extra = [build.result or {} for build in self.builds]
        if self.window is not None:
            self.window.result = self.window.parts.total()
            extra.append(self.window.result)
        return merge_parts([*self.parts, *extra])

    def keys(self) -> set[str]:
        """The groups, without summing anything."""
        out: set[str] = set()
        for part in [*self.parts, *(p for build in self.builds for p in build.parts)]:
            out.update(_projection(part))
        if self.window is not None:
            out |= self.window.parts.keys()
        return out

    def install(self) -> None:
        """Memoise the settled blocks, window and hot buckets ``total`` summed (on the timeline's thread, after
        ``total``)."""
        self.timeline.install(self.builds)
        if self.buckets:
            self.timeline.install_buckets(self.parts)
        if self.window is not None:
            self.window.parts.install()
            self.timeline.install_window(self.window)


def merge_parts(parts: Iterable[Part]) -> Projection:
    """The sum of ``Timeline.lifetime_parts``: equal to ``lifetime``, a new projection sharing nothing."""
    out: Projection = {}
    for part in parts:
        _merge_projection(out, _projection(part))
    return out


def total(projection: Projection) -> Aggregate:
    """Merge all groups of a projection into one aggregate."""
    out = Aggregate()
    for aggregate in projection.values():
        out.merge(aggregate)
    return out
