"""Bucketed aggregates over time, with rollups that keep long-window queries cheap.

Spans count at their event time in fixed buckets (one minute by default). Buckets older than
``fine_retention`` are compacted into hour buckets; buckets older than ``retention`` retire into a
per-series lifetime total, so counters exported to Prometheus never go down. Memory is
O(buckets x groups), never O(spans).

A window query ``[start, end)`` is answered from memoised day and hour projections for the blocks it
fully covers and from single buckets at its edges; a write into a block invalidates its memo. Query
results are independent of how the window is split, because merging is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import BucketState, Caps, Projection
from tokentrace.core.span import Span

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MINUTE_MS",
    "LifetimeParts",
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


class TimelineSnapshot(msgspec.Struct):
    """The timeline's whole state, for snapshots and materialised views."""

    fine: dict[int, BucketState]
    coarse: dict[int, BucketState]
    retired: BucketState


_QuerySpec = tuple[str | None, tuple[tuple[str, str], ...]]
#: Version-key kinds of stored buckets (day and hour blocks are keyed by their sizes).
_COARSE = -1
_FINE = -2
#: Settled-window results kept (the oldest is dropped first); windows slide once a bucket.
_WINDOW_MEMO_SIZE = 256


class Timeline:
    """Per-bucket aggregates with rollup memos and retention."""

    def __init__(self, settings: TimelineSettings | None = None) -> None:
        self.settings = settings or TimelineSettings()
        self._fine: dict[int, BucketState] = {}
        self._coarse: dict[int, BucketState] = {}
        self._retired = BucketState()
        self._versions: dict[tuple[int, int], int] = {}
        self._memo: dict[tuple[int, int, _QuerySpec], tuple[int, Projection]] = {}
        self._window_memo: dict[tuple[int, int, _QuerySpec], tuple[tuple[int, int], Projection]] = {}
        self._compactions = 0
        #: Bumped whenever ``_retired`` changes; keys the memo of its projections.
        self._retired_version = 0
        self._retired_memo: dict[_QuerySpec, tuple[int, Projection]] = {}
        #: Bumped by every change; readers may cache query results while it stays the same.
        self.generation = 0

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
        state.add(span, self.settings.caps)
        versions = self._versions
        versions[key] = versions.get(key, 0) + 1
        self._touch(at_ms)

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
            state.add_many(members, caps)
            versions[key] = versions.get(key, 0) + count
            self._touch(start, count)

    def hours_before(self, now_ms: int) -> int:
        """The start of the hour before which ``compact(now_ms)`` keeps no minute bucket."""
        cutoff = now_ms - self.settings.fine_retention_ms
        return cutoff - cutoff % HOUR_MS

    def _target(self, start: int, hours_before: int | None) -> tuple[BucketState, tuple[int, int]]:
        """The state a span of the bucket ``start`` counts in, and its version key: its minute if it exists, else
        its hour if that exists or the minute is before ``hours_before``, else a new minute."""
        state = self._fine.get(start)
        if state is not None:
            return state, (_FINE, start)
        hour = start - start % HOUR_MS
        state = self._coarse.get(hour)
        if state is not None:
            return state, (_COARSE, hour)
        if hours_before is not None and start < hours_before:
            state = self._coarse[hour] = BucketState()
            return state, (_COARSE, hour)
        state = self._fine[start] = BucketState()
        return state, (_FINE, start)

    def add_batch(self, batch: WireBatch, hours_before: int | None = None) -> None:
        """``add_many`` of a compiled batch's spans (``native.decode_batch``, bucketed by this timeline's
        ``bucket_ms``) at their starts: the same state, versions and generation, in one compiled call."""
        targets: list[tuple[BucketState, list[int]]] = []
        versions = self._versions
        for start, count in batch.buckets():
            state, key = self._target(start, hours_before)
            targets.append((state, [start]))
            versions[key] = versions.get(key, 0) + count
            self._touch(start, count)
        BucketState.add_batch_to(targets, batch, self.settings.caps)

    def merge_bucket(self, start_ms: int, state: BucketState) -> None:
        """Merge a whole bucket computed elsewhere (e.g. a replayed or remote partition)."""
        self._fine.setdefault(start_ms, BucketState()).merge(state)
        key = (_FINE, start_ms)
        self._versions[key] = self._versions.get(key, 0) + 1
        self._touch(start_ms)

    def replace_bucket(self, start_ms: int, state: BucketState | None) -> None:
        """Set a minute bucket to ``state`` whole (None: drop it), for a copy of state kept elsewhere."""
        self._replace(self._fine, _FINE, start_ms, state)

    def replace_hour(self, hour_ms: int, state: BucketState | None) -> None:
        """Set a compacted hour to ``state`` whole (None: drop it)."""
        self._replace(self._coarse, _COARSE, hour_ms, state)

    def replace_retired(self, state: BucketState) -> None:
        """Set what retired buckets counted (part of ``lifetime``)."""
        self._retired = state
        self._retired_version += 1
        self.generation += 1

    def _replace(self, table: dict[int, BucketState], kind: int, start: int, state: BucketState | None) -> None:
        if state is None:
            table.pop(start, None)
        else:
            table[start] = state
        versions = self._versions
        versions[(kind, start)] = versions.get((kind, start), 0) + 1
        self._touch(start)

    def compact(self, now_ms: int) -> None:
        """Fold buckets older than the fine retention into hours; retire those past retention."""
        self._compactions += 1
        settings = self.settings
        fine_cutoff = now_ms - settings.fine_retention_ms
        for start in [s for s in self._fine if s < fine_cutoff - fine_cutoff % HOUR_MS]:
            state = self._fine.pop(start)
            hour = start - start % HOUR_MS
            self._coarse.setdefault(hour, BucketState()).merge(state, settings.caps)
            self._versions[(_COARSE, hour)] = self._versions.get((_COARSE, hour), 0) + 1
        moved_before = fine_cutoff - fine_cutoff % HOUR_MS
        for memo_key in [k for k in self._memo if k[0] == _FINE and k[1] < moved_before]:
            del self._memo[memo_key]
        horizon = self.oldest_allowed_ms(now_ms)
        for table in (self._fine, self._coarse):
            for start in [s for s in table if s < horizon]:
                self._retired.merge(table.pop(start), settings.caps)
                self._retired_version += 1
                self._touch(start)  # the day memo holding this bucket is stale now
        for key in [k for k in self._versions if k[1] < horizon - DAY_MS]:
            del self._versions[key]
        for memo_key in [k for k in self._memo if k[1] < horizon - DAY_MS]:
            del self._memo[memo_key]

    def oldest_allowed_ms(self, now_ms: int) -> int:
        """Start of the oldest bucket still kept: spans before it are outside retention."""
        horizon = now_ms - self.settings.retention_ms
        return horizon - horizon % HOUR_MS + HOUR_MS

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
            # Everything before the current hour rarely changes: merge it once, reuse it while no write lands
            # in it, and merge only the current hour's buckets per query.
            _merge_projection(out, self._settled(start_ms, cut, spec))
            start_ms = cut
        self._collect(start_ms, end_ms, spec, out, (DAY_MS, HOUR_MS))
        return out

    def _settled(self, start: int, cut: int, spec: _QuerySpec) -> Projection:
        versions = self._versions
        first_hour = start - start % HOUR_MS
        # Versions only grow, so their sum changes whenever any hour of the range is written or retired.
        stamp = (self._compactions, sum(versions.get((HOUR_MS, h), 0) for h in range(first_hour, cut, HOUR_MS)))
        key = (start, cut, spec)
        cached = self._window_memo.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        projection: Projection = {}
        self._collect(start, cut, spec, projection, (DAY_MS, HOUR_MS))
        if len(self._window_memo) >= _WINDOW_MEMO_SIZE:
            del self._window_memo[next(iter(self._window_memo))]
        self._window_memo[key] = (stamp, projection)
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

    def lifetime_parts(self, groupby: str | None = None) -> LifetimeParts:
        """``lifetime`` as projections still to be summed (``LifetimeParts.total``), none of which anything
        changes afterwards: memoised projections of the retired totals and of unchanged days, hours and
        buckets, and new ones of the buckets written since. Gathering them is cheap; summing them, which for
        10k series took seconds, can run in another thread while this timeline goes on changing.

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
            out.parts.extend(
                self._bucket_projection(key, state, spec) for key, state in self._states_between(start, end)
            )
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
                cached = self._memo.get((size, block, spec))
                if cached is not None and cached[0] == version:
                    out.parts.append(cached[1])
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
        the settled window (everything before the current hour) whole when its memo is fresh, else as a build
        of it from its days, hours and buckets; then the current hour's buckets."""
        spec: _QuerySpec = (groupby, tuple(sorted((where or {}).items())))
        out = LifetimeParts([], [], self)
        start_ms = max(start_ms, end_ms - self.settings.retention_ms - 2 * DAY_MS)
        cut = end_ms - end_ms % HOUR_MS
        if cut - start_ms >= 2 * HOUR_MS:
            first_hour = start_ms - start_ms % HOUR_MS
            versions = self._versions
            stamp = (self._compactions, sum(versions.get((HOUR_MS, h), 0) for h in range(first_hour, cut, HOUR_MS)))
            key = (start_ms, cut, spec)
            cached = self._window_memo.get(key)
            if cached is not None and cached[0] == stamp:
                out.parts.append(cached[1])
            else:
                inner = LifetimeParts([], [], self)
                self._parts(start_ms, cut, spec, inner, (DAY_MS, HOUR_MS), cut)
                out.window = _WindowBuild(key, stamp, inner)
            start_ms = cut
        self._parts(start_ms, end_ms, spec, out, (DAY_MS, HOUR_MS), None)
        return out

    def install_window(self, window: _WindowBuild) -> None:
        """Memoise a settled window ``query_parts`` built, unless its hours were written since."""
        start, cut, _ = window.key
        first_hour = start - start % HOUR_MS
        versions = self._versions
        stamp = (self._compactions, sum(versions.get((HOUR_MS, h), 0) for h in range(first_hour, cut, HOUR_MS)))
        if window.result is None or stamp != window.stamp:
            return
        if len(self._window_memo) >= _WINDOW_MEMO_SIZE:
            del self._window_memo[next(iter(self._window_memo))]
        self._window_memo[window.key] = (stamp, window.result)

    def install(self, builds: Iterable[_Build]) -> None:
        """Memoise the blocks ``builds`` summed, unless written since they were listed."""
        for build in builds:
            if build.result is not None and self._versions.get(build.block) == build.version:
                self._memo[(build.block[0], build.block[1], build.spec)] = (build.version, build.result)

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
        memo_key = (size, block, spec)
        cached = self._memo.get(memo_key)
        if cached is not None and cached[0] == version:
            return cached[1]
        projection: Projection = {}
        self._collect(block, block + size, spec, projection, finer)
        self._memo[memo_key] = (version, projection)
        return projection

    def _bucket_projection(self, key: tuple[int, int], state: BucketState, spec: _QuerySpec) -> Projection:
        """One stored bucket's projection, memoised until that bucket is written again."""
        version = self._versions.get(key, 0)
        memo_key = (key[0], key[1], spec)
        cached = self._memo.get(memo_key)
        if cached is not None and cached[0] == version:
            return cached[1]
        projection = state.project(spec[0], dict(spec[1]))
        self._memo[memo_key] = (version, projection)
        return projection

    def attribute_keys(self, start_ms: int, end_ms: int) -> set[str]:
        """Attribute keys grouped in any bucket counted in ``[start_ms, end_ms)`` (what ``groupby`` can name)."""
        start_ms = max(start_ms, end_ms - self.settings.retention_ms - 2 * DAY_MS)
        keys: set[str] = set()
        for _, state in self._states_between(start_ms, end_ms):
            keys.update(state.attributes)
        return keys

    def _states_between(self, start: int, end: int) -> Iterable[tuple[tuple[int, int], BucketState]]:
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
        return TimelineSnapshot(fine=self._fine, coarse=self._coarse, retired=self._retired)

    def restore(self, snapshot: TimelineSnapshot) -> None:
        self._fine = dict(snapshot.fine)
        self._coarse = dict(snapshot.coarse)
        self._retired = snapshot.retired
        self._retired_version += 1
        self._versions.clear()
        self._memo.clear()
        self._window_memo.clear()
        self._compactions += 1
        for start in self._fine:
            self._versions[(_FINE, start)] = 1
            self._touch(start)
        for start in self._coarse:
            self._versions[(_COARSE, start)] = 1
            self._touch(start)


def _merge_projection(into: Projection, other: Projection) -> None:
    for group, aggregate in other.items():
        mine = into.get(group)
        if mine is None:
            into[group] = aggregate.copy()
        else:
            mine.merge(aggregate)


@dataclass
class _Build:
    """A stale settled block to memoise: its parts, summed off the timeline's thread into ``result``."""

    block: tuple[int, int]
    spec: _QuerySpec
    version: int
    parts: list[Projection]
    result: Projection | None = None


@dataclass
class _WindowBuild:
    """A stale settled window (``query``'s memo of everything before the current hour), built from ``parts``."""

    key: tuple[int, int, _QuerySpec]
    stamp: tuple[int, int]
    parts: LifetimeParts
    result: Projection | None = None


@dataclass
class LifetimeParts:
    """``Timeline.lifetime_parts`` or ``query_parts``: ``total`` may run in any thread; ``install`` then on the
    timeline's (its event loop)."""

    parts: list[Projection]
    builds: list[_Build]
    timeline: Timeline
    window: _WindowBuild | None = None

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
            out.update(part)
        if self.window is not None:
            out |= self.window.parts.keys()
        return out

    def install(self) -> None:
        """Memoise the settled blocks and window ``total`` summed (on the timeline's thread, after ``total``)."""
        self.timeline.install(self.builds)
        if self.window is not None:
            self.window.parts.install()
            self.timeline.install_window(self.window)


def merge_parts(parts: Iterable[Projection]) -> Projection:
    """The sum of ``Timeline.lifetime_parts``: equal to ``lifetime``, a new projection sharing nothing."""
    out: Projection = {}
    for part in parts:
        _merge_projection(out, part)
    return out


def total(projection: Projection) -> Aggregate:
    """Merge all groups of a projection into one aggregate."""
    out = Aggregate()
    for aggregate in projection.values():
        out.merge(aggregate)
    return out
