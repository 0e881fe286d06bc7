"""A worker's state: per (source partition, bucket) aggregates that know which source offset they reached.

Pure logic, no Faust and no I/O, so the replay rules can be tested on their own:

* The state of source partition ``p`` is a set of entries (their types, keys and encoding are the view's
  schema, ``tokentrace.view.schema``): ``b"p:<bucket start ms>"`` (a ``BucketEntry``: the core's
  ``BucketState`` plus the highest source offset applied to it) and one ``b"p:meta"`` entry
  (``PartitionMeta``: counters of spans, poison messages and out-of-bounds spans, with its own offset).
* ``Applier.apply`` applies one Kafka message to the entries it touches and skips every entry whose
  offset is already >= the message's offset. Replaying a message — after a crash, a rebalance or a
  changelog write that got ahead of the committed source offset — changes nothing, and since each entry
  is always an exact prefix of its partition's events, whichever version of an entry survives, replay
  from the committed source offset makes it exact again. ``Applier.apply_many`` applies several messages
  of a partition with exactly that effect, adding each entry's spans in one batch; ``Applier.apply_deferred``
  leaves the additions queued in an ``Additions`` (across messages and partitions) until its ``settle``.
* ``compact`` folds minute buckets older than the fine retention into hour entries
  (``b"p:h<hour start>"``), which then take their hour's late spans; the minutes are deleted only after
  the hour entry is durable, and a minute that survives under an hour entry is ignored and dropped.
* ``expire`` retires buckets past retention: it folds them into the partition's ``b"p:retired"`` entry
  (``RetiredEntry``: the merged state and the ``horizon`` below which every bucket has been folded) and
  deletes them. Written in that order; a bucket below the horizon that survived a crash is ignored by
  every reader and deleted (not folded again) by the next pass, and spans for a retired bucket are
  rejected as too old, so retiring never loses or doubles a count.
* A message carrying an idempotency id (a Kafka header the API sets from ``Idempotency-Key``) that an earlier
  message of the partition applied is a retry: counted in the meta entry's ``retries`` and skipped whole.
  The ids live in key block entries (``b"p:k<n>"``, ``processors.idempotency``), written in the same
  flushes as the aggregates, so they are restored with them after a crash or a rebalance.
* Every decision is a function of the message alone (its bytes, offset and timestamp), never of the
  wall clock, so a replay decides exactly as the first run did. Spans without timestamps count at the
  message's timestamp; spans older than aggregate retention or too far in the future of the message's
  timestamp are counted as rejected, never mis-bucketed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from tokentrace.core import native
from tokentrace.core.buckets import SEP, BucketState, Caps
from tokentrace.core.codec import decode_wire
from tokentrace.core.ingest import Pricer, SpanRejected, prepare_spans
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span
from tokentrace.core.tiers import NEVER, Fate, Tiers, hour_of, tiers_at
from tokentrace.core.timeline import TimelineSettings
from tokentrace.processors.idempotency import KeyPolicy, applied_before, digest, record
from tokentrace.view.schema import (
    STATE_SCHEMA,
    BucketEntry,
    Entry,
    PartitionMeta,
    RetiredEntry,
    bucket_key,
    hour_key,
    is_hour_key,
    meta_key,
    parse_key,
    retired_key,
)

if TYPE_CHECKING:
    from tokentrace._native import WireBatch
    from tokentrace.view.keys import IndexItem

__all__ = [
    "HOUR_MS",
    "Additions",
    "Applied",
    "Applier",
    "ConsumedMessage",
    "compact",
    "expire",
    "table_name",
]

HOUR_MS = 3_600_000
#: One source message: its offset, its timestamp in ms and its value.
ConsumedMessage = tuple[int, int, bytes | None]


def table_name(schema: int = STATE_SCHEMA) -> str:
    """The worker table of ``schema`` (its changelog topic is ``<app id>-<table name>-changelog``)."""
    return "buckets" if schema == 1 else f"buckets-v{schema}"


def compact(
    entries: MutableMapping[bytes, Entry], partition: int, cutoff_ms: int, caps: Caps | None = None
) -> tuple[list[bytes], list[bytes]]:
    """Fold ``partition``'s minute buckets that start before the fine cutoff ``cutoff_ms`` into hour entries
    (rule 1 of tokentrace/core/tiers.py); returns (hour keys to write, minute keys to delete once those writes
    are durable).

    An hour entry, once it exists, takes every later span of its hour (``Applier`` routes them) and
    carries the highest offset of what it absorbed, so replays skip it like any bucket. A minute bucket
    whose hour entry already existed before this pass is a survivor of a crash between the two writes
    (rule 3): deleted, never folded again.
    """
    tiers = Tiers(fine_cutoff_ms=cutoff_ms, horizon_ms=NEVER)  # folding only: ``expire`` retires
    hours: dict[int, BucketEntry] = {}
    deleted: list[bytes] = []
    # By start: a capped merge keeps the series it meets first, so the hour is the same whatever order the table
    # holds its entries in (one restored from the changelog after a rebalance holds them in another).
    for key, entry in _by_start(entries):
        owner, start = parse_key(key)
        if owner != partition or start is None or not isinstance(entry, BucketEntry):
            continue
        if tiers.fate(start, is_hour=is_hour_key(key)) is not Fate.FOLD:
            continue
        hour = hour_of(start)
        target = hours.get(hour)
        if target is None:
            existing = entries.get(hour_key(partition, hour))
            if isinstance(existing, BucketEntry):  # compacted before: this minute is a stale survivor
                del entries[key]
                deleted.append(key)
                continue
            target = hours[hour] = BucketEntry(-1, BucketState())
        target.state.merge(entry.state, caps)  # the hour keeps the per-bucket attribute caps
        target.offset = max(target.offset, entry.offset)
        del entries[key]
        deleted.append(key)
    written = []
    for hour, entry in hours.items():
        key = hour_key(partition, hour)
        entries[key] = entry
        written.append(key)
    return written, deleted


def expire(
    entries: MutableMapping[bytes, Entry], partition: int, horizon_ms: int, caps: Caps | None = None
) -> tuple[list[bytes], list[bytes]]:
    """Retire ``partition``'s buckets (minutes and hours) that start before the horizon ``horizon_ms`` (rule 2
    of tokentrace/core/tiers.py); returns (keys to write: the retired entry, keys to delete once that write is
    durable)."""
    rkey = retired_key(partition)
    retired = entries.get(rkey)
    if not isinstance(retired, RetiredEntry):
        retired = RetiredEntry(0, BucketState())
    if horizon_ms <= retired.horizon:
        return [], []
    retiring = Tiers(fine_cutoff_ms=NEVER, horizon_ms=horizon_ms)
    # What counts where it is now: not below the old horizon (retired already), not a minute under an hour
    # entry (counted in that hour). Hour entries as they were before this pass deletes any.
    counted = Tiers(fine_cutoff_ms=NEVER, horizon_ms=retired.horizon)
    hours: set[int] = set()
    for key in entries:
        if is_hour_key(key):
            owner, start = parse_key(key)
            if owner == partition and start is not None:
                hours.add(start)
    deleted: list[bytes] = []
    for key, entry in _by_start(entries):
        owner, start = parse_key(key)
        if owner != partition or start is None or not isinstance(entry, BucketEntry):
            continue
        is_hour = is_hour_key(key)
        if retiring.fate(start, is_hour=is_hour) is not Fate.RETIRE:
            continue
        if counted.counts(start, is_hour=is_hour, hours=hours):
            retired.state.merge(entry.state, caps)
        del entries[key]
        deleted.append(key)
    retired.horizon = horizon_ms
    entries[rkey] = retired
    return [rkey], deleted


def _by_start(entries: MutableMapping[bytes, Entry]) -> list[tuple[bytes, Entry]]:
    """The entries in the order of their buckets' starts (then their keys), whatever order the table has."""

    def start_of(item: tuple[bytes, Entry]) -> tuple[int, bytes]:
        start = parse_key(item[0])[1]
        return (start if start is not None else -1, item[0])

    return sorted(entries.items(), key=start_of)


@dataclass
class Applied:
    """What one message did: the keys it changed, the spans it accepted (for the trace index)."""

    dirty: list[bytes] = field(default_factory=list)
    #: Accepted spans with the time they count at: ``(span, ms)`` pairs, or the message's compiled batch.
    spans: list[IndexItem] = field(default_factory=list)
    #: How many spans it accepted.
    accepted: int = 0
    poison: str | None = None
    #: Whether it was skipped as a retry of a message the partition applied before.
    retry: bool = False


#: What ``Additions`` holds for one state, in order: lists of spans, and compiled batches with the buckets
#: of theirs that count in it.
_Segment = list[Span] | tuple["WireBatch", list[int]]


class Additions:
    """Accepted spans not added to their bucket states yet: ``settle`` adds each state's queue in one
    ``BucketState.add_many`` (one call per state costs far less per span than one per message: each call
    writes every aggregate it touches back to Python, bin by bin).

    Until then the entries' offsets and counters are current and their aggregates are not: settle before
    reading or encoding any entry. Nothing ``Applier`` decides reads an aggregate (only keys and offsets),
    so queueing changes no decision; spans queued for a state that is no longer in the table (a partition
    lost in a rebalance) are added to that orphan and go nowhere, and their events, never acked, are
    replayed by the partition's next owner.
    """

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self._queued: dict[int, tuple[BucketState, list[_Segment]]] = {}  # by id of the state (kept alive here)
        #: Spans queued.
        self.spans = 0

    def _segments(self, state: BucketState) -> list[_Segment]:
        slot = self._queued.get(id(state))
        if slot is None:
            slot = self._queued[id(state)] = (state, [])
        return slot[1]

    def queue(self, state: BucketState, spans: list[Span]) -> None:
        """Queue ``spans`` (a list this takes over) for ``state``."""
        segments = self._segments(state)
        if segments and isinstance(segments[-1], list):
            segments[-1].extend(spans)
        else:
            segments.append(spans)
        self.spans += len(spans)

    def queue_batch(self, state: BucketState, batch: WireBatch, buckets: list[int], spans: int) -> None:
        """Queue the ``spans`` spans of ``batch`` that count in ``buckets`` for ``state``."""
        self._segments(state).append((batch, buckets))
        self.spans += spans

    def settle(self) -> None:
        """Add every queued span to its state, in the order queued."""
        queued, self._queued, self.spans = self._queued, {}, 0
        caps = self.caps
        for state, segments in queued.values():
            batches: list[tuple[WireBatch, list[int]]] = []
            for segment in segments:
                if isinstance(segment, list):
                    if batches:
                        state.add_batches(batches, caps)
                        batches = []
                    state.add_many(segment, caps)
                else:
                    batches.append(segment)
            if batches:
                state.add_batches(batches, caps)


def _claim(entries: MutableMapping[bytes, Entry], key: bytes, offset: int) -> BucketEntry | None:
    """The bucket entry ``key`` (created empty if absent) moved to ``offset`` for the message to add to it, or
    None when it has counted that offset already (a replay)."""
    entry = entries.get(key)
    if not isinstance(entry, BucketEntry):
        entry = entries[key] = BucketEntry(-1, BucketState())
    elif entry.offset >= offset:
        return None
    entry.offset = offset
    return entry


class _Bounds(NamedTuple):
    oldest_ms: int
    horizon_ms: int
    key_of: Callable[[int], bytes]


class Applier:
    """Applies Kafka messages of the span topic to a partition's entries (see the module docstring)."""

    def __init__(
        self, settings: TimelineSettings, pricer: Pricer | None, max_future_ms: int, keys: KeyPolicy | None = None
    ) -> None:
        self.settings = settings
        self.pricer = pricer
        self.max_future_ms = max_future_ms
        self.keys = keys or KeyPolicy()

    def tiers(self, at_ms: int) -> Tiers:
        """Where the fine cutoff and the retention horizon stand at ``at_ms`` (tokentrace/core/tiers.py)."""
        return tiers_at(at_ms, self.settings.fine_retention_ms, self.settings.retention_ms)

    def oldest_allowed_ms(self, at_ms: int) -> int:
        """Start of the oldest bucket still kept: spans before it are outside retention."""
        return self.tiers(at_ms).horizon_ms

    def apply(
        self,
        entries: MutableMapping[bytes, Entry],
        partition: int,
        offset: int,
        timestamp_ms: int,
        payload: bytes | None,
        ident: str | None = None,
    ) -> Applied:
        """Apply one message (``ident``: its idempotency id); entries that already reached ``offset`` are left
        alone."""
        additions = Additions(self.settings.caps)
        try:
            return self._apply_one(entries, partition, (offset, timestamp_ms, payload), additions, ident)
        finally:
            additions.settle()

    def apply_many(
        self, entries: MutableMapping[bytes, Entry], partition: int, messages: Iterable[ConsumedMessage]
    ) -> list[Applied]:
        """Apply messages of one partition, in order: the entries and results of ``apply`` for each in turn.

        Each message's offsets and counters are applied as ``apply`` would; its accepted spans are queued per
        bucket state and each state takes its queue in one ``add_many`` at the end (``Additions``). The
        additions are made even if a message raises: the entries are then those of ``apply`` up to it.
        """
        additions = Additions(self.settings.caps)
        try:
            return [self._apply_one(entries, partition, message, additions) for message in messages]
        finally:
            additions.settle()

    def apply_deferred(
        self,
        entries: MutableMapping[bytes, Entry],
        partition: int,
        offset: int,
        timestamp_ms: int,
        payload: bytes | None,
        additions: Additions,
        ident: str | None = None,
    ) -> Applied:
        """``apply``, with the spans' additions left in ``additions``: the entries are those of ``apply`` once
        ``additions.settle()`` has run (settle before reading or encoding them)."""
        return self._apply_one(entries, partition, (offset, timestamp_ms, payload), additions, ident)

    def _apply_one(
        self,
        entries: MutableMapping[bytes, Entry],
        partition: int,
        message: ConsumedMessage,
        additions: Additions,
        ident: str | None = None,
    ) -> Applied:
        """``apply`` for one message, its spans queued in ``additions`` instead of added."""
        offset, timestamp_ms, payload = message
        out = Applied()
        mkey = meta_key(partition)
        meta = entries.get(mkey)
        if not isinstance(meta, PartitionMeta):
            meta = PartitionMeta()
        fresh = offset > meta.offset
        if ident is not None and self._is_retry(entries, partition, meta, fresh, message, ident, out):
            if fresh:
                meta.retries += 1
                _count_message(entries, mkey, meta, offset, out)
            return out
        bounds = self._bounds(entries, partition, timestamp_ms)
        decode = native.decode_batch
        if decode is not None and payload is not None:  # the usual message, compiled from bytes to rows
            batch = decode(
                payload,
                bounds.oldest_ms,
                timestamp_ms + self.max_future_ms,
                self.settings.bucket_ms,
                bounds.horizon_ms,
                self.pricer is not None,
                MAX_TOKENS,
                MAX_COST_USD,
                MAX_LATENCY_MS,
                MAX_SCORE,
                SEP,
            )
            if batch is not None:
                self._apply_batch(entries, offset, batch, bounds.key_of, additions, out)
                if fresh:
                    meta.spans += out.accepted
                    _count_message(entries, mkey, meta, offset, out)
                return out
        try:
            if payload is None:
                raise ValueError("empty message value")
            spans = decode_wire(payload)
        except (msgspec.DecodeError, ValueError) as exc:
            out.poison = str(exc) or type(exc).__name__
            if fresh:
                meta.poison += 1
                _count_message(entries, mkey, meta, offset, out)
            return out

        rejected, by_key = self._route(bounds, timestamp_ms, spans, out)
        for key, members in by_key.items():
            entry = _claim(entries, key, offset)
            if entry is not None:
                additions.queue(entry.state, members)
                out.dirty.append(key)

        if fresh:
            meta.spans += out.accepted
            meta.too_old += rejected["too_old"]
            meta.future += rejected["future"]
            meta.invalid += rejected["invalid"]
            _count_message(entries, mkey, meta, offset, out)
        return out

    def _is_retry(
        self,
        entries: MutableMapping[bytes, Entry],
        partition: int,
        meta: PartitionMeta,
        fresh: bool,
        message: ConsumedMessage,
        ident: str,
        out: Applied,
    ) -> bool:
        """Whether the message is a retry (``out.retry``); if not and it is new to the partition, record its id
        (advancing ``meta.key_clock``; the caller stores the meta entry)."""
        offset, timestamp_ms, _ = message
        key = digest(ident)
        clock = max(meta.key_clock, timestamp_ms)
        if applied_before(entries, partition, key, offset, clock, self.keys):
            out.retry = True
        elif fresh:  # an offset the meta entry counted is recorded already (its block was written first)
            out.dirty.append(record(entries, partition, key, offset, timestamp_ms))
        if fresh:
            meta.key_clock = clock
        return out.retry

    def _bounds(self, entries: MutableMapping[bytes, Entry], partition: int, timestamp_ms: int) -> _Bounds:
        """What decides where a message's spans go: its oldest accepted start, the retired horizon, and the
        entry of each bucket (its hour entry once compacted, else its minute)."""
        retired = entries.get(retired_key(partition))

        def key_of(start: int) -> bytes:
            key = hour_key(partition, hour_of(start))
            return key if key in entries else bucket_key(partition, start)

        return _Bounds(
            self.oldest_allowed_ms(timestamp_ms),
            retired.horizon if isinstance(retired, RetiredEntry) else 0,
            key_of,
        )

    @staticmethod
    def _apply_batch(
        entries: MutableMapping[bytes, Entry],
        offset: int,
        batch: WireBatch,
        key_of: Callable[[int], bytes],
        additions: Additions,
        out: Applied,
    ) -> None:
        """Queue a compiled batch's spans for their entries, as ``_apply_one`` does with decoded spans."""
        by_key: dict[bytes, tuple[list[int], int]] = {}
        for start, count in batch.buckets():
            key = key_of(start)
            slot = by_key.get(key)
            if slot is None:
                by_key[key] = ([start], count)
            else:  # an hour entry taking several minutes
                slot[0].append(start)
                by_key[key] = (slot[0], slot[1] + count)
        for key, (starts, count) in by_key.items():
            entry = _claim(entries, key, offset)
            if entry is not None:
                additions.queue_batch(entry.state, batch, starts, count)
                out.dirty.append(key)
        out.spans.append(batch)
        out.accepted = len(batch)

    def _route(
        self, bounds: _Bounds, timestamp_ms: int, spans: list[Span], out: Applied
    ) -> tuple[dict[str, int], dict[bytes, list[Span]]]:
        """Stamp, check and price ``spans`` (decided by the message's timestamp alone); the rejections by
        reason and the accepted spans by entry key: the bucket's hour entry once compacted, else its minute.
        Accepted spans go to ``out.spans`` too."""
        rejected = {"too_old": 0, "future": 0, "invalid": 0}
        bucket_ms = self.settings.bucket_ms
        oldest, horizon, key_of = bounds

        compiled = native.route_spans
        if compiled is not None:  # the usual message, all accepted: the same grouping, compiled
            latest = timestamp_ms + self.max_future_ms
            routed = compiled(spans, oldest, latest, bucket_ms, horizon, self.pricer is not None, key_of)
            if routed is not None:
                out.spans += routed[1]
                out.accepted += len(routed[1])
                return rejected, routed[0]
        by_key: dict[bytes, list[Span]] = {}
        keys: dict[int, bytes] = {}  # entry key by bucket start
        outcomes = prepare_spans(spans, timestamp_ms, self.pricer, oldest, self.max_future_ms)
        for span, at in zip(spans, outcomes, strict=True):
            if isinstance(at, SpanRejected):
                rejected[at.reason if at.reason in ("too_old", "future") else "invalid"] += 1
                continue
            start = at - at % bucket_ms
            if start < horizon:  # its bucket is retired already
                rejected["too_old"] += 1
                continue
            key = keys.get(start)
            if key is None:
                key = keys[start] = key_of(start)
            members = by_key.get(key)
            if members is None:
                members = by_key[key] = []
            members.append(span)
            out.spans.append((span, at))
            out.accepted += 1
        return rejected, by_key


def _count_message(
    entries: MutableMapping[bytes, Entry], mkey: bytes, meta: PartitionMeta, offset: int, out: Applied
) -> None:
    """A fresh message is counted: the partition's meta entry moves past ``offset`` and is written."""
    meta.messages += 1
    meta.offset = offset
    entries[mkey] = meta
    out.dirty.append(mkey)
