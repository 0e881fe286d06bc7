"""The distributed store: spans go to Kafka, aggregates and traces come from the Redis view.

Stateless apart from caches that Redis can always rebuild, so any number of replicas answer alike:

* ``ingest`` publishes the batch to the span topic (``acks=all``, idempotent producer; one message per
  request, cut only by size, on its first trace's partition: ``core.topic``) and returns once the broker acknowledged every
  message — a 202 means "in Kafka", and the workers count it exactly once from there.
  An ``Idempotency-Key`` travels as a Kafka header of each message (``core.topic``): a retry
  goes to the same partition (its first trace's) and that partition's worker skips a message id it applied
  before, so a retried batch whose 202 was lost counts once, whichever replica took each attempt.
* Reads go through the view's reader (``tokentrace.view.reader.ViewReader``): it catches up with the view's
  change feed into a local ``Timeline`` before each query, and reads the trace index for ``/traces``.
* A replica that publishes also watches the topic's end offsets (every second) against what the view has
  counted: ``queue_depth`` in ``/health`` and the ``tokentrace_view_lag_messages`` gauge (``topic_lag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from tokentrace.api.stores.base import StoreHealth, StoreUnavailable
from tokentrace.api.stores.sliced import query_each
from tokentrace.api.stores.topic_lag import EndOffsets, lag_by_partition
from tokentrace.core.buckets import Projection
from tokentrace.core.span import Span
from tokentrace.core.timeline import LifetimeParts, Timeline, TimelineSettings
from tokentrace.core.topic import MESSAGE_ID_HEADER, message_id, split_messages
from tokentrace.core.traces import TraceFilter
from tokentrace.view.keys import DEFAULT_PREFIX, Keys
from tokentrace.view.reader import ViewReader
from tokentrace.view.schema import STATE_SCHEMA

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

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


class RedisStore:
    """``Store`` over Kafka (writes) and the Redis view (reads, through ``view``)."""

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
        #: The view's reader: the local copy of the aggregates and the trace index.
        self.view = ViewReader(
            redis_url, settings, prefix=prefix, state_schema=state_schema, max_trace_scan=max_trace_scan
        )
        self.settings = self.view.settings
        self.redis_url = redis_url
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.max_batch_spans = max_batch_spans
        self.max_message_bytes = max_message_bytes
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
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[int] = []

    @property
    def keys(self) -> Keys:
        return self.view.keys

    @property
    def unreadable(self) -> int:
        """Entries skipped because this build cannot read them (another version's aggregate layout)."""
        return self.view.unreadable

    # --------------------------------------------------------------- lifecycle
    @property
    def redis(self) -> aioredis.Redis:
        if self.view.client is None:
            raise StoreUnavailable("store not opened")
        return self.view.client

    async def open(self, *, publish: bool = True) -> None:
        """Connect to Redis, and to Kafka unless ``publish`` is False (a reader of the view only)."""
        await self.view.open()
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
        await self.view.close()

    # ------------------------------------------------------------------ writes
    #: Spans go to Kafka as ``split_messages`` cuts them (by partition and size), decoded for that.
    takes_compiled = False

    async def ingest_compiled(self, wire: bytes, batch: WireBatch, idempotency_key: str | None = None) -> None:
        raise NotImplementedError("the distributed store ingests decoded spans (takes_compiled is False)")

    async def ingest(self, spans: list[Span], idempotency_key: str | None = None) -> None:
        producer = self._producer
        if producer is None:
            raise StoreUnavailable("not connected to Kafka")
        messages, too_large = split_messages(spans, self._partitions, self.max_batch_spans, self.max_message_bytes)
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
        return self.view.timeline.oldest_allowed_ms(now_ms)

    @property
    def timeline(self) -> Timeline:
        """The local copy of the view as of the last ``sync`` (a new object after Redis lost its data)."""
        return self.view.timeline

    # ------------------------------------------------------------------- reads
    async def query(self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]) -> Projection:
        await self.sync()
        return self.view.timeline.query(start_ms, end_ms, groupby, where)

    async def series(
        self, intervals: list[tuple[int, int]], groupby: str | None, where: dict[str, str]
    ) -> list[Projection]:
        await self.sync()
        return await query_each(self.view.timeline, intervals, groupby, where)

    async def attribute_keys(self, start_ms: int, end_ms: int) -> set[str]:
        await self.sync()
        return self.view.timeline.attribute_keys(start_ms, end_ms)

    async def lifetime(self, groupby: str | None) -> Projection:
        await self.sync()
        return self.view.timeline.lifetime(groupby)

    async def query_parts(
        self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]
    ) -> LifetimeParts:
        await self.sync()
        return self.view.timeline.query_parts(start_ms, end_ms, groupby, where)

    async def lifetime_parts(self, groupby: str | None) -> LifetimeParts:
        await self.sync()
        return self.view.timeline.lifetime_parts(groupby)

    async def sync(self) -> None:
        """Catch up with the view's change feed (one round trip when nothing changed)."""
        if self.view.client is None:
            raise StoreUnavailable("store not opened")
        try:
            changed = await self.view.sync()
        except aioredis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        if changed:
            self._refresh_counters()

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
        return lag_by_partition(self._ends, {p: m.offset for p, m in self.view.meta.items()})

    def _refresh_lag_gauge(self) -> None:
        if self._ends:  # unknown until the end offsets were read once: no samples rather than zeros
            self.gauges[LAG_GAUGE] = {(("partition", str(p)),): float(n) for p, n in self._lag().items()}

    def _refresh_counters(self) -> None:
        self._refresh_lag_gauge()
        metas = self.view.meta.values()
        self.counters[POISON_COUNTER] = {(): float(sum(m.poison for m in metas))}
        self.counters[RETRIED_COUNTER] = {(): float(sum(m.retries for m in metas))}
        self.counters[REJECTED_COUNTER] = {
            (("reason", "too_old"),): float(sum(m.too_old for m in metas)),
            (("reason", "future"),): float(sum(m.future for m in metas)),
            (("reason", "invalid"),): float(sum(m.invalid for m in metas)),
        }
        self.counters[UNREADABLE_COUNTER] = {(): float(self.view.unreadable)}

    # ------------------------------------------------------------------ traces
    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        try:
            found = await self.view.traces([trace_id])
        except aioredis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return found[0].body() if found else None

    async def search_traces(self, where: TraceFilter, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        try:
            return await self.view.search_traces(where, limit, offset)
        except aioredis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def recent_spans(self, limit: int) -> list[Span]:
        try:
            return await self.view.recent_spans(limit)
        except aioredis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def health(self) -> StoreHealth:
        reason = None
        try:
            await self.sync()
        except StoreUnavailable as exc:
            reason = str(exc)
        if self._producer is None:
            reason = reason or "not connected to Kafka"
        span_count = sum(m.spans for m in self.view.meta.values())
        # Messages on the span topic the view has not counted yet (as of the last end offsets read).
        queue_depth = sum(self._lag().values())
        return StoreHealth(reason is None, reason, span_count, queue_depth, self.transport)
