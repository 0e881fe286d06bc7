"""The distributed store: spans go to Kafka, aggregates and traces come from the Redis view.

Stateless apart from caches that Redis can always rebuild, so any number of replicas answer alike:

* ``ingest`` publishes the batch to the span topic (``acks=all``, idempotent producer; one message per
  request, cut only by size, on its first trace's partition) and returns once the broker acknowledged every
  message — a 202 means "in Kafka", and the workers count it exactly once from there.
  An ``Idempotency-Key`` travels as a Kafka header of each message (``processors.idempotency``): a retry
  goes to the same partition (its first trace's) and that partition's worker skips a message id it applied
  before, so a retried batch whose 202 was lost counts once, whichever replica took each attempt.
* Reads first catch up with the view's change feed (``redis_view``): only the entries written since the
  last read are fetched, each replacing its (partition, bucket) version; a bucket's partitions are
  merged with ``BucketState.merge`` into a local ``Timeline``, whose rollup memos keep long windows
  (``/metrics?window=30d``) cheap. A changed or missing epoch (Redis flushed or restarted) drops the
  cache and starts over, while the workers re-materialize.
* ``/traces`` reads the trace index the workers write (spans by trace id, a sorted set by start time).
* A replica that publishes also watches the topic's end offsets (every second) against what the view has
  counted: ``queue_depth`` in ``/health`` and the ``tokentrace_view_lag_messages`` gauge (``topic_lag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from tokentrace.api.stores.base import StoreHealth, StoreUnavailable
from tokentrace.api.stores.redis_view import DEFAULT_PREFIX, Keys, trace_spans
from tokentrace.api.stores.topic_lag import EndOffsets, lag_by_partition
from tokentrace.core.aggregate import LATENCY_BUCKETS_MS, PROMPT_TOKEN_BUCKETS
from tokentrace.core.buckets import BucketState, Projection
from tokentrace.core.span import Span
from tokentrace.core.timeline import HOUR_MS, LifetimeParts, Timeline, TimelineSettings
from tokentrace.core.traces import StoredTrace as Trace
from tokentrace.core.traces import TraceFilter
from tokentrace.processors.idempotency import MESSAGE_ID_HEADER, message_id
from tokentrace.processors.state import (
    HOUR_TAG,
    META,
    RETIRED,
    STATE_SCHEMA,
    BucketEntry,
    PartitionMeta,
    RetiredEntry,
    decode_entry,
)
from tokentrace.producers.transports.kafka import partition_for, split_messages

__all__ = ["LAG_GAUGE", "POISON_COUNTER", "RedisStore"]

log = logging.getLogger(__name__)

POISON_COUNTER = "tokentrace_poison_messages"
RETRIED_COUNTER = "tokentrace_worker_retried_messages"
REJECTED_COUNTER = "tokentrace_worker_rejected_spans"
UNREADABLE_COUNTER = "tokentrace_view_unreadable_entries"
LAG_GAUGE = "tokentrace_view_lag_messages"
#: How often a publishing replica reads the topic's end offsets.
LAG_REFRESH_S = 1.0
#: Longest ``close`` waits for the lag watch to stop (it may be connecting to an unreachable broker).
LAG_CLOSE_S = 10.0
_FETCH_CHUNK = 500


class RedisStore:
    """``Store`` over Kafka (writes) and the Redis view (reads)."""

    transport = "kafka"

    def __init__(
        self,
        redis_url: str,
        bootstrap_servers: str,
        topic: str,
        settings: TimelineSettings | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_batch_spans: int = 500,
        max_message_bytes: int = 900_000,
        max_trace_scan: int = 100_000,
        producer_options: dict[str, Any] | None = None,
        state_schema: int = STATE_SCHEMA,
    ) -> None:
        self.settings = settings or TimelineSettings()
        self.redis_url = redis_url
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.keys = Keys(prefix, state_schema)
        self.max_batch_spans = max_batch_spans
        self.max_message_bytes = max_message_bytes
        self.max_trace_scan = max_trace_scan
        self._producer_options = {
            "bootstrap_servers": bootstrap_servers,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 0,
            "max_request_size": max(1 << 20, max_message_bytes + 4096),
            "request_timeout_ms": 30_000,
            **(producer_options or {}),
        }
        #: Prometheus families the deployment adds (``ServerContext.extra_counters``), refreshed on sync.
        self.counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        #: Prometheus gauges likewise (``ServerContext.extra_gauges``): the view's lag behind the topic.
        self.gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._end_offsets: EndOffsets | None = None
        self._ends: dict[int, int] = {}  # partition -> the topic's end offset, as last read
        self._lag_task: asyncio.Task[None] | None = None
        self._lag_failing = False
        self._redis: aioredis.Redis | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[int] = []
        self._view = Timeline(self.settings)
        self._parts: dict[int, dict[int, BucketState]] = {}  # minute -> partition -> state
        self._hours: dict[int, dict[int, BucketState]] = {}  # compacted hour -> partition -> state
        self._meta: dict[int, PartitionMeta] = {}
        self._retired: dict[int, RetiredEntry] = {}
        self._epoch: bytes | None = None
        self._seq = 0.0
        self._sync_lock = asyncio.Lock()
        #: Entries skipped because this build cannot read them (another version's aggregate layout).
        self.unreadable = 0

    # --------------------------------------------------------------- lifecycle
    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreUnavailable("store not opened")
        return self._redis

    async def open(self, *, publish: bool = True) -> None:
        """Connect to Redis, and to Kafka unless ``publish`` is False (a reader of the view only)."""
        self._redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=10.0, socket_connect_timeout=5.0)
        if not publish:
            return
        producer = AIOKafkaProducer(**self._producer_options)
        await producer.start()
        self._producer = producer
        self._partitions = sorted(await producer.partitions_for(self.topic))
        self._end_offsets = EndOffsets(self.bootstrap_servers, self.topic)
        self._lag_task = asyncio.create_task(self._watch_lag())

    async def close(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.wait({self._lag_task}, timeout=LAG_CLOSE_S)  # never hang on an unreachable broker
            self._lag_task = None
        if self._end_offsets is not None:
            await self._end_offsets.close()
            self._end_offsets = None
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # ------------------------------------------------------------------ writes
    async def ingest(self, spans: list[Span], idempotency_key: str | None = None) -> None:
        producer = self._producer
        if producer is None:
            raise StoreUnavailable("not connected to Kafka")
        # One request, one partition (that of its first trace), cut only by size: fanned out by trace over
        # every partition, a 100-span request made ~partitions messages, and a worker pays per message.
        partitions = [partition_for(spans[0].trace_id, self._partitions)] if spans else self._partitions
        messages, too_large = split_messages(spans, partitions, self.max_batch_spans, self.max_message_bytes)
        if too_large:
            raise StoreUnavailable(f"{len(too_large)} spans are larger than a Kafka message may be")

        def headers(part: int) -> list[tuple[str, bytes]] | None:
            if idempotency_key is None:
                return None
            return [(MESSAGE_ID_HEADER, message_id(idempotency_key, part).encode())]

        try:
            futures = [
                await producer.send(self.topic, m.value, key=m.key, partition=m.partition, headers=headers(part))
                for part, m in enumerate(messages)
            ]
            await asyncio.gather(*futures)
        except Exception as exc:
            raise StoreUnavailable(f"Kafka did not acknowledge the spans: {exc!r}") from exc

    def oldest_allowed_ms(self, now_ms: int) -> int:
        return self._view.oldest_allowed_ms(now_ms)

    @property
    def timeline(self) -> Timeline:
        """The local copy of the view as of the last ``sync`` (a new object after Redis lost its data)."""
        return self._view

    # ------------------------------------------------------------------- reads
    async def query(self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]) -> Projection:
        await self.sync()
        return self._view.query(start_ms, end_ms, groupby, where)

    async def series(
        self, intervals: list[tuple[int, int]], groupby: str | None, where: dict[str, str]
    ) -> list[Projection]:
        await self.sync()
        view = self._view
        return [view.query(start, end, groupby, where) for start, end in intervals]

    async def attribute_keys(self, start_ms: int, end_ms: int) -> set[str]:
        await self.sync()
        return self._view.attribute_keys(start_ms, end_ms)

    async def lifetime(self, groupby: str | None) -> Projection:
        await self.sync()
        return self._view.lifetime(groupby)

    async def query_parts(
        self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]
    ) -> LifetimeParts:
        await self.sync()
        return self._view.query_parts(start_ms, end_ms, groupby, where)

    async def lifetime_parts(self, groupby: str | None) -> LifetimeParts:
        await self.sync()
        return self._view.lifetime_parts(groupby)

    async def sync(self) -> None:
        """Catch up with the view's change feed (one round trip when nothing changed)."""
        async with self._sync_lock:
            try:
                await self._sync()
            except aioredis.RedisError as exc:
                raise StoreUnavailable(f"Redis: {exc}") from exc

    async def _sync(self) -> None:
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.epoch)
            pipe.zrangebyscore(keys.changes, f"({self._seq}", "+inf", withscores=True)
            epoch, changes = await pipe.execute()
        if epoch != self._epoch:
            log.info("redis view: new epoch %r, reloading", epoch)
            self._epoch = epoch
            self._view = Timeline(self.settings)
            self._parts.clear()
            self._hours.clear()
            self._meta.clear()
            self._retired.clear()
            self._seq = 0.0
            changes = await self.redis.zrangebyscore(keys.changes, "-inf", "+inf", withscores=True)
        if not changes:
            return
        touched: set[int] = set()
        touched_hours: set[int] = set()
        horizons = {p: r.horizon for p, r in self._retired.items()}
        for i in range(0, len(changes), _FETCH_CHUNK):
            chunk = changes[i : i + _FETCH_CHUNK]
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
        self._seq = max(self._seq, max(score for _, score in changes))
        if horizons != {p: r.horizon for p, r in self._retired.items()}:
            # Buckets below a partition's horizon are counted in its retired entry.
            touched.update(self._parts)
            touched_hours.update(self._hours)
            retired = BucketState()
            for entry in self._retired.values():
                retired.merge(entry.state)
            self._view.replace_retired(retired)
        for hour in touched_hours:  # a new hour entry hides its partition's minutes of that hour
            touched.update(
                start for start in range(hour, hour + HOUR_MS, self.settings.bucket_ms) if start in self._parts
            )
            self._view.replace_hour(hour, self._merged(self._hours.get(hour, {}), hour, hour=True))
        for start in touched:
            self._view.replace_bucket(start, self._merged(self._parts.get(start, {}), start, hour=False))
        self._refresh_counters()

    def _merged(self, states: dict[int, BucketState], start: int, *, hour: bool) -> BucketState | None:
        """The bucket as the merge of the partitions that count it here (not retired, not compacted)."""
        hour_start = start - start % HOUR_MS
        merged: BucketState | None = None
        for partition, state in states.items():
            if start < self._horizon(partition):
                continue
            if not hour and partition in self._hours.get(hour_start, {}):
                continue
            if merged is None:
                merged = BucketState()
            merged.merge(state)
        return merged

    def _apply(self, member: str, data: bytes | None, touched: set[int], touched_hours: set[int]) -> None:
        partition_text, _, rest = member.partition(":")
        partition = int(partition_text)
        entry = decode_entry(data) if data else None
        if rest == META:
            if isinstance(entry, PartitionMeta):
                self._meta[partition] = entry
            else:
                self._meta.pop(partition, None)
            return
        if rest == RETIRED:
            if isinstance(entry, RetiredEntry):
                self._retired[partition] = entry
            return
        if isinstance(entry, BucketEntry):
            _check_shape(entry.state)
        is_hour = rest.startswith(HOUR_TAG)
        start = int(rest[1:] if is_hour else rest)
        (touched_hours if is_hour else touched).add(start)
        table = self._hours if is_hour else self._parts
        if isinstance(entry, BucketEntry):
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

    # -------------------------------------------------------------------- lag
    async def _watch_lag(self) -> None:
        """Read the topic's end offsets every ``LAG_REFRESH_S`` (the view's side is read by ``sync``)."""
        while True:
            try:
                await self.refresh_lag()
            except Exception as exc:  # Kafka or Redis away: keep the last figures, say so once
                if not self._lag_failing:
                    log.warning("view lag: cannot refresh it (Kafka's end offsets or the Redis view): %r", exc)
                self._lag_failing = True
            else:
                self._lag_failing = False
            await asyncio.sleep(LAG_REFRESH_S)

    async def refresh_lag(self) -> dict[int, int]:
        """Read the topic's end offsets now and catch up with the view; the lag per partition."""
        if self._end_offsets is None:
            raise StoreUnavailable("not connected to Kafka")
        self._ends = await self._end_offsets.read(self._partitions)
        await self.sync()
        self._refresh_lag_gauge()
        return self._lag()

    def _lag(self) -> dict[int, int]:
        return lag_by_partition(self._ends, {p: m.offset for p, m in self._meta.items()})

    def _refresh_lag_gauge(self) -> None:
        if self._ends:  # unknown until the end offsets were read once: no samples rather than zeros
            self.gauges[LAG_GAUGE] = {(("partition", str(p)),): float(n) for p, n in self._lag().items()}

    def _refresh_counters(self) -> None:
        self._refresh_lag_gauge()
        metas = self._meta.values()
        self.counters[POISON_COUNTER] = {(): float(sum(m.poison for m in metas))}
        self.counters[RETRIED_COUNTER] = {(): float(sum(m.retries for m in metas))}
        self.counters[REJECTED_COUNTER] = {
            (("reason", "too_old"),): float(sum(m.too_old for m in metas)),
            (("reason", "future"),): float(sum(m.future for m in metas)),
            (("reason", "invalid"),): float(sum(m.invalid for m in metas)),
        }
        self.counters[UNREADABLE_COUNTER] = {(): float(self.unreadable)}

    # ------------------------------------------------------------------ traces
    async def _load_traces(self, trace_ids: list[str]) -> list[Trace]:
        traces: list[Trace] = []
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
                trace = Trace(trace_id)
                for span in spans:
                    trace.add(span)
                traces.append(trace)
        return traces

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        try:
            found = await self._load_traces([trace_id])
        except aioredis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return found[0].body() if found else None

    async def search_traces(self, where: TraceFilter, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        low = "-inf" if where.since_ms is None else str(where.since_ms)
        high = "+inf" if where.until_ms is None else f"({where.until_ms}"
        redis = self.redis
        try:
            if not (where.attributes or where.model or where.caller or where.status):
                total = int(await redis.zcount(self.keys.traces, low, high))
                ids = await redis.zrevrangebyscore(self.keys.traces, high, low, start=offset, num=limit)
                page = await self._load_traces(_texts(ids))
                return total, [t.summary() for t in page]
            ids = await redis.zrevrangebyscore(self.keys.traces, high, low, start=0, num=self.max_trace_scan)
            matched = [t for t in await self._load_traces(_texts(ids)) if any(where.matches_span(s) for s in t.spans)]
        except aioredis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        matched.sort(key=lambda t: t.started_ms, reverse=True)
        return len(matched), [t.summary() for t in matched[offset : offset + limit]]

    async def recent_spans(self, limit: int) -> list[Span]:
        try:
            ids = await self.redis.zrevrange(self.keys.traces, 0, limit - 1)
            traces = await self._load_traces(_texts(ids))
        except aioredis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        spans = [s for t in traces for s in t.spans]
        spans.sort(key=lambda s: s.started_at or "", reverse=True)
        return spans[:limit]

    async def health(self) -> StoreHealth:
        reason = None
        try:
            await self.sync()
        except StoreUnavailable as exc:
            reason = str(exc)
        if self._producer is None:
            reason = reason or "not connected to Kafka"
        span_count = sum(m.spans for m in self._meta.values())
        # Messages on the span topic the view has not counted yet (as of the last end offsets read).
        queue_depth = sum(self._lag().values())
        return StoreHealth(reason is None, reason, span_count, queue_depth, self.transport)


_LATENCY_SLOTS = len(LATENCY_BUCKETS_MS) + 1
_PROMPT_SLOTS = len(PROMPT_TOKEN_BUCKETS) + 1


def _check_shape(state: BucketState) -> None:
    """Raise ValueError if the aggregates' histogram layout is not this build's (merging would fail)."""
    groups = [state.series, *(by_series for values in state.attributes.values() for by_series in values.values())]
    for group in groups:
        for aggregate in group.values():
            if len(aggregate.latency_buckets) != _LATENCY_SLOTS or len(aggregate.prompt_buckets) != _PROMPT_SLOTS:
                raise ValueError("histogram buckets differ from this build's (written by another version)")


def _texts(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
