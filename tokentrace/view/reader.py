"""The view's reader: the Redis view the workers write, as a local ``Timeline`` and the trace index.

* ``sync`` catches up with the change feed (``view.keys``): only the entries written since the last read are
  fetched, each replacing its (partition, bucket) version; a bucket's partitions are merged with
  ``BucketState.merge`` into the local ``Timeline``, whose rollup memos keep long windows
  (``/metrics?window=30d``) cheap. A changed or missing epoch (Redis flushed or restarted) drops the copy and
  starts over, while the workers re-materialize. Entries below a partition's retired horizon, and minutes
  under their hour entry, are hidden (they are counted there).
* Memory (as the embedded store's, tokentrace/core/frozen.py): a partition's bucket is kept as the bytes Redis
  holds for it (its encoded ``BucketState``), decoded only to merge its bucket. A settled bucket (before the
  timeline's hot hours) goes into the ``Timeline`` frozen: a single partition's bytes as they are (shared with
  the copy), several partitions' merge encoded, and then their copies are dropped: they are in Redis, read
  again (``refetched``) only if one of them changes (a late span, a fold into its hour, a retirement). Every
  ``settle_interval_s``, ``Timeline.settle`` moves the hot hours on and freezes what no entry changed since. It
  never folds or retires: the workers do, and their hour and retired entries say so here.
* ``traces``, ``search_traces`` and ``recent_spans`` read the trace index (spans by trace id, a sorted set by
  start time).

Used by the API replicas (``api.stores.redis_store``) and by the worker's alert evaluation alike. Redis
errors are raised as ``redis.RedisError``; callers decide what an outage means for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from tokentrace.core import frozen
from tokentrace.core.aggregate import LATENCY_BUCKETS_MS, PROMPT_TOKEN_BUCKETS
from tokentrace.core.buckets import BucketState
from tokentrace.core.span import Span
from tokentrace.core.tiers import NEVER, Tiers, hour_of
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import HOUR_MS, Timeline, TimelineSettings
from tokentrace.core.traces import StoredTrace, TraceFilter
from tokentrace.view.keys import DEFAULT_PREFIX, Keys, trace_spans
from tokentrace.view.schema import (
    HOUR_TAG,
    META,
    RETIRED,
    STATE_SCHEMA,
    KeyBlock,
    PartitionMeta,
    RetiredEntry,
)

__all__ = ["ViewReader"]

log = logging.getLogger(__name__)

_FETCH_CHUNK = 500
#: How often the local timeline's settled buckets are frozen (the embedded store's maintenance interval).
SETTLE_INTERVAL_S = 30.0


class _FrozenEntry(msgspec.Struct, array_like=True, tag="b"):
    """A ``BucketEntry`` with its state left as its encoded bytes."""

    offset: int
    state: msgspec.Raw


_decode_entry = msgspec.msgpack.Decoder(_FrozenEntry | PartitionMeta | RetiredEntry | KeyBlock).decode


class ViewReader:
    """A local copy of the Redis view under ``prefix`` for entries of ``state_schema``."""

    def __init__(
        self,
        redis_url: str,
        settings: TimelineSettings | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        state_schema: int = STATE_SCHEMA,
        max_trace_scan: int = 100_000,
        settle_interval_s: float = SETTLE_INTERVAL_S,
        clock: Callable[[], int] = now_ms,
        fetch_chunk: int = _FETCH_CHUNK,
    ) -> None:
        self.redis_url = redis_url
        self.settings = settings or TimelineSettings()
        self.keys = Keys(prefix, state_schema)
        self.max_trace_scan = max_trace_scan
        self.settle_interval_s = settle_interval_s
        #: Entries read per round trip (and merged per step of a long sync).
        self.fetch_chunk = fetch_chunk
        self._clock = clock
        self._settled_at: int | None = None
        #: The connection (None until ``open``).
        self.client: aioredis.Redis | None = None
        #: Each partition's meta entry as last read (exact counters, the offset the view counted through).
        self.meta: dict[int, PartitionMeta] = {}
        #: Entries skipped because this build cannot read them (another version's aggregate layout).
        self.unreadable = 0
        self._timeline = Timeline(self.settings)
        #: minute -> partition -> its state's bytes, or None: in Redis only (``_drop_settled``).
        self._parts: dict[int, dict[int, msgspec.Raw | None]] = {}
        self._hours: dict[int, dict[int, msgspec.Raw | None]] = {}  # the same for compacted hours
        #: Entries read again to merge a settled bucket whose copies were dropped.
        self.refetched = 0
        self._retired: dict[int, RetiredEntry] = {}
        self._horizons: dict[int, int] = {}  # each partition's retired horizon the timeline counts by
        self._epoch: bytes | None = None
        self._seq = 0.0
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.client = aioredis.Redis.from_url(self.redis_url, socket_timeout=10.0, socket_connect_timeout=5.0)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    @property
    def redis(self) -> aioredis.Redis:
        if self.client is None:
            raise RuntimeError("view reader not opened")
        return self.client

    @property
    def timeline(self) -> Timeline:
        """The copy as of the last ``sync`` (a new object after Redis lost its data)."""
        return self._timeline

    # ------------------------------------------------------------- aggregates
    async def sync(self) -> bool:
        """Catch up with the change feed (one round trip when nothing changed); whether anything changed."""
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> bool:
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.epoch)
            pipe.zrangebyscore(keys.changes, f"({self._seq}", "+inf", withscores=True)
            epoch, changes = await pipe.execute()
        if epoch != self._epoch:
            log.info("redis view: new epoch %r, reloading", epoch)
            self._epoch = epoch
            self._timeline = Timeline(self.settings)
            self._parts.clear()
            self._hours.clear()
            self.meta.clear()
            self._retired.clear()
            self._horizons.clear()
            self._seq = 0.0
            self._settled_at = None
            changes = await self.redis.zrangebyscore(keys.changes, "-inf", "+inf", withscores=True)
        now = self._clock()
        settled = self._settled_at is None or now - self._settled_at >= self.settle_interval_s * 1000
        if settled:
            self._timeline.settle(now)  # before merging: a settled bucket goes in frozen at once
            self._settled_at = now
        if not changes:
            if settled:
                self._drop_settled(set(self._parts), set(self._hours))
            return False
        touched: set[int] = set()
        touched_hours: set[int] = set()
        # Partitions' meta and retired entries first, then bucket by bucket (an hour before its minutes), so
        # that each chunk's complete buckets are merged (and their copies dropped) before the next is read:
        # a full load never holds every partition's copy of every bucket at once.
        changes.sort(key=_order)
        chunk_size = self.fetch_chunk
        for i in range(0, len(changes), chunk_size):
            chunk = changes[i : i + chunk_size]
            async with self.redis.pipeline(transaction=False) as pipe:
                for member, _ in chunk:
                    pipe.hget(keys.entry(member.decode()), "d")
                values = await pipe.execute()
            for (member, _), data in zip(chunk, values, strict=True):
                try:
                    self._apply(member.decode(), data, touched, touched_hours)
                except (msgspec.DecodeError, ValueError) as exc:  # written by an incompatible version
                    self.unreadable += 1
                    log.error("redis view: skipping unreadable entry %s: %s", member.decode(), exc)
            if i + chunk_size < len(changes):  # the chunk's last bucket may go on in the next one
                await self._merge(touched, touched_hours, _order(chunk[-1])[1])
        self._seq = max(self._seq, max(score for _, score in changes))
        # (Against the horizons of the last complete sync: one that failed half-way may have read a retired entry.)
        moved = [r.horizon for p, r in self._retired.items() if self._horizons.get(p) != r.horizon]
        if moved:
            # Buckets below a partition's horizon are counted in its retired entry.
            touched.update(start for start in self._parts if start < max(moved))
            touched_hours.update(start for start in self._hours if start < max(moved))
            retired = BucketState()
            for entry in self._retired.values():
                retired.merge(entry.state)
            self._timeline.replace_retired(retired)
        await self._merge(touched, touched_hours, None)
        self._horizons = {p: r.horizon for p, r in self._retired.items()}
        if settled:
            self._drop_settled(set(self._parts), set(self._hours))
        return True

    async def _merge(self, touched: set[int], touched_hours: set[int], before: int | None) -> None:
        """Merge the touched buckets starting before ``before`` (None: all) into the timeline, and take them out
        of the touched sets. A touched hour touches its minutes (a new hour entry hides its partition's)."""
        hours = {h for h in touched_hours if before is None or h < before}
        bucket_ms = self.settings.bucket_ms
        for hour in hours:
            touched.update(start for start in range(hour, hour + HOUR_MS, bucket_ms) if start in self._parts)
        minutes = {m for m in touched if before is None or m < before}
        await self._refetch(minutes, hours)
        for hour in hours:
            self._timeline.replace_hour(hour, self._merged(self._hours.get(hour, {}), hour, hour=True))
        for start in minutes:
            self._timeline.replace_bucket(start, self._merged(self._parts.get(start, {}), start, hour=False))
        self._drop_settled(minutes, hours)
        touched -= minutes
        touched_hours -= hours

    async def _refetch(self, touched: set[int], touched_hours: set[int]) -> None:
        """Read again the entries of the buckets to merge whose copies were dropped (``_drop_settled``): a
        settled bucket's partitions are in Redis, and its merge in the timeline."""
        wanted: list[tuple[dict[int, msgspec.Raw | None], int, str]] = []
        for table, starts, tag in ((self._parts, touched, ""), (self._hours, touched_hours, HOUR_TAG)):
            for start in starts:
                states = table.get(start, {})
                wanted.extend((states, p, f"{p}:{tag}{start}") for p, raw in states.items() if raw is None)
        for i in range(0, len(wanted), _FETCH_CHUNK):
            chunk = wanted[i : i + _FETCH_CHUNK]
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, _, member in chunk:
                    pipe.hget(self.keys.entry(member), "d")
                values = await pipe.execute()
            self.refetched += len(chunk)
            for (states, partition, _), data in zip(chunk, values, strict=True):
                try:
                    entry = _decode_entry(data) if data else None
                except msgspec.DecodeError:
                    entry = None  # a newer version this build cannot read: the change feed brings it next
                if isinstance(entry, _FrozenEntry):
                    states[partition] = entry.state
                else:  # deleted since: the change feed brings its tombstone next
                    del states[partition]

    def _drop_settled(self, touched: set[int], touched_hours: set[int]) -> None:
        """Forget the partitions' copies of settled buckets merged from several (their merge is in the timeline,
        frozen; a single partition's bytes are the timeline's own)."""
        hot_from = self._timeline.hot_from
        for table, starts in ((self._parts, touched), (self._hours, touched_hours)):
            for start in starts:
                states = table.get(start)
                if states is not None and start < hot_from and len(states) > 1:
                    for partition in states:
                        states[partition] = None

    def _merged(
        self, states: dict[int, msgspec.Raw | None], start: int, *, hour: bool
    ) -> BucketState | msgspec.Raw | None:
        """The bucket as the merge of the partitions that count it here (rules 2 and 3 of core/tiers.py: not
        retired, and a minute not under its partition's hour entry); frozen if it is settled."""
        in_hour = self._hours.get(hour_of(start), {})
        counted: list[msgspec.Raw] = []
        for partition, raw in states.items():
            hours = (hour_of(start),) if partition in in_hour else ()
            if raw is not None and Tiers(NEVER, self._horizon(partition)).counts(start, is_hour=hour, hours=hours):
                counted.append(raw)
        if not counted:
            return None
        settled = start < self._timeline.hot_from
        if settled and len(counted) == 1:
            return counted[0]
        merged = BucketState()
        for raw in counted:
            merged.merge(frozen.thaw(raw))
        return frozen.freeze(merged) if settled else merged

    def _apply(self, member: str, data: bytes | None, touched: set[int], touched_hours: set[int]) -> None:
        partition_text, _, rest = member.partition(":")
        partition = int(partition_text)
        entry = _decode_entry(data) if data else None
        if rest == META:
            if isinstance(entry, PartitionMeta):
                self.meta[partition] = entry
            else:
                self.meta.pop(partition, None)
            return
        if rest == RETIRED:
            if isinstance(entry, RetiredEntry):
                self._retired[partition] = entry
            return
        if isinstance(entry, _FrozenEntry):
            _check_shape(frozen.thaw(entry.state))
        is_hour = rest.startswith(HOUR_TAG)
        start = int(rest[1:] if is_hour else rest)
        (touched_hours if is_hour else touched).add(start)
        table = self._hours if is_hour else self._parts
        if isinstance(entry, _FrozenEntry):
            table.setdefault(start, {})[partition] = entry.state
        else:
            states = table.get(start)
            if states is not None:
                states.pop(partition, None)
                if not states:
                    del table[start]

    def _horizon(self, partition: int) -> int:
        retired = self._retired.get(partition)
        return retired.horizon if retired is not None else 0

    # ------------------------------------------------------------------ traces
    async def traces(self, trace_ids: list[str]) -> list[StoredTrace]:
        """The traces of ``trace_ids`` that the index holds, in that order, each's spans by start."""
        traces: list[StoredTrace] = []
        for i in range(0, len(trace_ids), _FETCH_CHUNK):
            chunk = trace_ids[i : i + _FETCH_CHUNK]
            async with self.redis.pipeline(transaction=False) as pipe:
                for trace_id in chunk:
                    pipe.get(self.keys.trace(trace_id))
                    pipe.hvals(self.keys.legacy_trace(trace_id))  # written by an earlier build
                rows = await pipe.execute()
            for trace_id, lines, legacy in zip(chunk, rows[0::2], rows[1::2], strict=True):
                if not lines and not legacy:
                    continue
                spans = sorted(trace_spans(lines, legacy), key=lambda s: (s.started_at or "", s.span_id))
                trace = StoredTrace(trace_id)
                for span in spans:
                    trace.add(span)
                traces.append(trace)
        return traces

    async def search_traces(self, where: TraceFilter, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """How many traces match and the summaries of page ``offset``/``limit``, newest first. Without span
        filters this is the listing's count; with them, the newest ``max_trace_scan`` traces are scanned."""
        low = "-inf" if where.since_ms is None else str(where.since_ms)
        high = "+inf" if where.until_ms is None else f"({where.until_ms}"
        redis = self.redis
        if not (where.attributes or where.model or where.caller or where.status):
            total = int(await redis.zcount(self.keys.traces, low, high))
            ids = await redis.zrevrangebyscore(self.keys.traces, high, low, start=offset, num=limit)
            page = await self.traces(_texts(ids))
            return total, [t.summary() for t in page]
        ids = await redis.zrevrangebyscore(self.keys.traces, high, low, start=0, num=self.max_trace_scan)
        matched = [t for t in await self.traces(_texts(ids)) if any(where.matches_span(s) for s in t.spans)]
        matched.sort(key=lambda t: t.started_ms, reverse=True)
        return len(matched), [t.summary() for t in matched[offset : offset + limit]]

    async def recent_spans(self, limit: int) -> list[Span]:
        """The spans of the newest ``limit`` traces, newest first, at most ``limit``."""
        ids = await self.redis.zrevrange(self.keys.traces, 0, limit - 1)
        spans = [s for t in await self.traces(_texts(ids)) for s in t.spans]
        spans.sort(key=lambda s: s.started_at or "", reverse=True)
        return spans[:limit]


_LATENCY_SLOTS = len(LATENCY_BUCKETS_MS) + 1
_PROMPT_SLOTS = len(PROMPT_TOKEN_BUCKETS) + 1


def _order(change: tuple[bytes, float]) -> tuple[int, int, int]:
    """Where a change-feed member goes in a sync: partitions' own entries first, then by bucket start, an hour
    entry before the minutes of its hour."""
    rest = change[0].decode().partition(":")[2]
    is_hour = rest.startswith(HOUR_TAG)
    try:
        return (1, int(rest[1:] if is_hour else rest), 0 if is_hour else 1)
    except ValueError:  # meta, retired (or what ``_apply`` reports as unreadable)
        return (0, NEVER, 0)


def _check_shape(state: BucketState) -> None:
    """Raise ValueError if the aggregates' histogram layout is not this build's (merging would fail)."""
    groups = [state.series, *(by_series for values in state.attributes.values() for by_series in values.values())]
    for group in groups:
        for aggregate in group.values():
            if len(aggregate.latency_buckets) != _LATENCY_SLOTS or len(aggregate.prompt_buckets) != _PROMPT_SLOTS:
                raise ValueError("histogram buckets differ from this build's (written by another version)")


def _texts(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
