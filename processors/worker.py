"""The Faust worker: span topic → exact per (partition, bucket) aggregates in a table → Redis view.

Built to be exact under ``kill -9`` and rebalances, around what faust-streaming 0.15 actually does:

* ``processing_guarantee="at_least_once"``, one agent with ``concurrency=1`` on ``stream.noack()``:
  Faust commits a source offset only once its event is acked, and this worker acks an event only after
  every changelog record covering it has been acknowledged by the broker (``acks=all``). Faust's own
  ``table[key] = value`` drops the changelog send future and its commit path does not wait for the
  producer buffer to drain, so the worker writes the memory store itself and sends the changelog with
  ``Table.send_changelog``, keeping the future. A failed or stuck changelog write ends the process
  (``os._exit``): raising would let Faust ack and commit the event.
* A plain table (``memory://``) keyed ``b"<source partition>:<bucket start>"`` whose value carries the
  highest source offset it has counted (``processors.state``; encoded as ``view.schema`` says); any replayed
  event is skipped per entry.
  No windowed tables, no ``take()``, no ``group_by``.
* Table writes are coalesced: every ``flush_interval`` (or ``flush_events`` events) each changed entry
  is encoded once and sent once; the events since the last flush are acked when those sends are acked.
  A flush sends its changelog records only once the previous flush's records are acked.
* Spans are indexed for ``/traces`` before their events are acked (a replay appends them again; readers keep
  the last line per span id). The index writes of a flush overlap the agent's work and the next flushes (up
  to ``TRACE_FLUSHES_IN_FLIGHT`` flushes wait for theirs); events are still acked in order, each after its
  own spans are indexed. Aggregates are materialized once the changelog acked them (not waiting for the
  trace index), by a background writer that retries while Redis is down and re-materializes everything the
  worker owns after a rebalance or a Redis flush.
* A message whose idempotency id (the ``tokentrace-idempotency-key`` header, set by the API from a request's
  ``Idempotency-Key``) the partition applied before is skipped as a retry (``processors.idempotency``); the
  ids are table entries flushed with the aggregates, restored with them, and never materialized in Redis.
* Poison messages (bad bytes, wrong schema, unknown wire version) are logged and counted in the
  partition's meta entry; they never stop the partition.

* A timer compacts minute buckets past the fine retention into hour entries and retires buckets past
  retention into the partition's retired entry (lifetime totals for Prometheus); the replaced entries
  are deleted with changelog tombstones one flush later, once what absorbed them is durable.

* Alert rules are evaluated on Faust's leader timer (one worker of the group) against the Redis view, read
  through the view's reader (``view.reader``), from the rule states shared in Redis; state writes are
  compare-and-set, so a leader change, or two workers that both think they lead during a rebalance, never
  announce an episode twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import faust
from faust.serializers import codecs
from faust.types import TP

from tokentrace.alerting.redis_shared import shared_alert_service
from tokentrace.alerting.service import AlertService
from tokentrace.config import Config, milliseconds, timeline_settings
from tokentrace.core.ingest import Pricer
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import TimelineSettings
from tokentrace.core.timeline_reader import TimelineReader
from tokentrace.core.topic import header_id
from tokentrace.processors import faust_adapter
from tokentrace.processors.idempotency import KeyPolicy, collect
from tokentrace.processors.state import Additions, Applier, compact, expire, table_name
from tokentrace.processors.store import STORE_URL
from tokentrace.view.keys import DEFAULT_PREFIX, Keys
from tokentrace.view.reader import ViewReader
from tokentrace.view.schema import (
    META,
    STATE_SCHEMA,
    TOMBSTONE_VERSION,
    BucketEntry,
    KeyBlock,
    PartitionMeta,
    decode_entry,
    encode_entry,
    is_key_block,
    meta_key,
    parse_key,
)
from tokentrace.view.writer import Materializer, Pending

__all__ = ["ENTRY_CODEC", "WorkerSettings", "build_app"]

log = logging.getLogger(__name__)

_META_SUFFIX = f":{META}".encode()
ENTRY_CODEC = "tokentrace-entry"
#: Exit status when a changelog write fails (the events it covers were not acked).
EXIT_CHANGELOG_FAILED = 70
#: Exit status when applying a message raised (a bug: malformed input is counted as poison instead).
EXIT_APPLY_FAILED = 71
#: Tombstones of the Redis view are dropped this long after the deletion, checked this often.
TOMBSTONE_GRACE_S = 3600.0
TOMBSTONE_CHECK_S = 60.0
#: A hole still there this long after the partition was sought back over it is sought back again.
RESEEK_S = 2.0
#: A partition with messages waiting at the offset its state needs next, none of which arrived for this long, is
#: stalled: logged with Faust's fetch state, put back among the fetched partitions and sought to that offset.
#: (Faust's Consumer.getmany drops records aiokafka already returned when the generation changes or the flow
#: stops mid-batch, and a later seek to the committed offset skips partitions committed at 0 or never.)
STALL_S = 10.0
#: How often the broker's end offsets are read to look for stalled partitions.
STALL_CHECK_S = 5.0


def _exit_now(status: int, message: str, *args: object) -> NoReturn:
    """Log (with the exception being handled) and end the process at once: raising would let Faust ack and
    commit the events not yet durable; what was not acked is replayed on restart."""
    log.critical(message, *args, exc_info=True)
    logging.shutdown()
    os._exit(status)


class _EntryCodec(codecs.Codec):
    """Faust codec for table values: the worker's msgpack entries."""

    def _dumps(self, obj: Any) -> bytes:
        return encode_entry(obj)

    def _loads(self, s: bytes) -> Any:
        return decode_entry(s)


codecs.register(ENTRY_CODEC, _EntryCodec())


_EntryValue = faust_adapter.value_type_with_codec(ENTRY_CODEC)


#: The configuration's defaults: the settings below that come from ``tokentrace.yml`` default to them.
_DEFAULTS = Config()


@dataclass
class WorkerSettings:
    """What a worker runs with; ``from_config`` derives it from ``tokentrace.yml``, the rest are tuning."""

    bootstrap_servers: str
    redis_url: str
    topic: str = _DEFAULTS.kafka.topic
    partitions: int = _DEFAULTS.kafka.partitions
    replication_factor: int = _DEFAULTS.kafka.replication_factor
    app_id: str = _DEFAULTS.kafka.app_id
    prefix: str = DEFAULT_PREFIX
    timeline: TimelineSettings = field(default_factory=lambda: timeline_settings(_DEFAULTS))
    max_future_ms: int = milliseconds(_DEFAULTS.aggregation.max_future_skew)
    trace_retention_ms: int = _DEFAULTS.storage.trace_retention_ms
    flush_interval_s: float = 0.5
    flush_events: int = 5000
    changelog_timeout_s: float = 60.0
    commit_interval_s: float = 1.0
    retire_interval_s: float = 60.0
    #: Copy poison messages there (with headers naming the source and the error); None: only count them.
    dead_letter_topic: str | None = None
    #: How long the group waits for a crashed worker before rebalancing its partitions (Faust's default: 60 s).
    session_timeout_s: float = milliseconds(_DEFAULTS.kafka.session_timeout) / 1000
    datadir: str | None = None
    #: Evaluate the configuration's alert rules (and the API's, from Redis) on the leader; None: no alerts.
    alerts_config: Config | None = None
    alert_interval_s: float = milliseconds(_DEFAULTS.alerting.interval) / 1000
    #: Most bytes fetched per partition and request. Faust's default (1 MiB) holds about five 500-span
    #: messages, and a worker then waits for the broker most of the time: 11-12k spans/s at 55 % of a core,
    #: against 17-25k at 85-90 % with 8 MiB (bench/RESULTS.md). A fetch request stays under aiokafka's 50 MiB.
    fetch_partition_bytes: int = 8 * 1024 * 1024
    #: Messages buffered for the agent (Faust's default 4096 would be ~750 MiB of 500-span messages).
    stream_buffer: int = 256
    #: How long the broker may hold a fetch for partitions without new data. Faust hard-codes 1500 ms, and
    #: aiokafka leaves a partition whose last records are still buffered out of the fetch in flight, so a
    #: message could wait for that long poll to end: at a steady 5k spans/s, p99 freshness was 1.9-2.4 s
    #: in about 40 % of runs with 1500 ms and 0.71-0.79 s in every run with 100 ms.
    fetch_wait_ms: int = 100
    #: The state layout this worker writes (``view.schema.STATE_SCHEMA``); another value keeps the table
    #: and the view apart from this build's and rebuilds them from the span topic (upgrade tests use it).
    state_schema: int = STATE_SCHEMA
    #: How long (message time) each partition remembers the idempotency ids it applied, and the ids of at
    #: least how many of its last messages (``processors.idempotency.KeyPolicy``).
    idempotency_window_ms: int = 86_400_000
    idempotency_max_keys: int = 200_000
    faust_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, prefix: str | None = None) -> WorkerSettings:
        """The settings ``tokentrace.yml`` (``kafka``, ``redis``, ``storage``, ``aggregation``, ``alerting``)
        gives; ``prefix`` is the view's Redis key prefix."""
        kafka = config.kafka
        return cls(
            bootstrap_servers=kafka.bootstrap_servers,
            redis_url=config.redis.url,
            topic=kafka.topic,
            partitions=kafka.partitions,
            replication_factor=kafka.replication_factor,
            app_id=kafka.app_id,
            prefix=prefix or DEFAULT_PREFIX,
            timeline=timeline_settings(config),
            max_future_ms=milliseconds(config.aggregation.max_future_skew),
            trace_retention_ms=config.storage.trace_retention_ms,
            dead_letter_topic=kafka.dead_letter_topic,
            session_timeout_s=milliseconds(kafka.session_timeout) / 1000,
            alerts_config=config,
            alert_interval_s=milliseconds(config.alerting.interval) / 1000,
        )


@dataclass
class _Hole:
    """A partition sought back because an offset past ``expected`` arrived first."""

    expected: int
    sought_at: float


#: Flushes whose trace index writes may still be running when the next flush starts. Indexing a flush's
#: spans in Redis took as long as the flush interval at ~25k spans/s, and the agent waited for it 35 % of the
#: time; overlapping them keeps it busy while a slower Redis still holds the agent back (bench/RESULTS.md).
TRACE_FLUSHES_IN_FLIGHT = 3


class _Flusher:
    """Coalesces table writes: encode each changed entry once, send its changelog, ack after the acks."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.events: list[Any] = []
        self.dirty: set[bytes] = set()
        self.spans: list[Any] = []
        self.last = time.monotonic()
        self.lock = asyncio.Lock()
        self.stream: Any = None
        #: The last flush's changelog acks (its records are durable once this is done).
        self.durable: asyncio.Future[None] | None = None
        #: Flushes not completed yet (trace index written, events acked), oldest first.
        self.in_flight: deque[asyncio.Future[None]] = deque()
        self.futures: list[Any] = []  # other sends the events wait for (dead letters)
        self.delete_pending: set[bytes] = set()  # deletions whose replacing writes are not sent yet
        self.delete_ready: set[bytes] = set()  # deletions whose replacing writes are sent and being acked

    def due(self) -> bool:
        if not self.events and not self.dirty and not self.delete_pending and not self.delete_ready:
            return False
        return len(self.events) >= self.worker.settings.flush_events or (
            time.monotonic() - self.last >= self.worker.settings.flush_interval_s
        )

    async def flush(self) -> None:
        """Send the changed entries' changelog records now; ack their events once the broker acked them.

        The acks are awaited in the background (the agent keeps processing meanwhile); the next flush
        waits for the previous one's changelog acks first, and for the oldest flush to complete while
        ``TRACE_FLUSHES_IN_FLIGHT`` have not; events are acked in order.
        """
        async with self.lock:
            began = time.monotonic()
            if self.durable is not None:
                await self.durable
            await self._collect(TRACE_FLUSHES_IN_FLIGHT - 1)
            self.worker.wait_s += time.monotonic() - began
            self.last = time.monotonic()
            # Deletions go out one flush after the writes that replace them (hour and retired entries)
            # completed, so the changelog never holds a deletion without what absorbed the entry.
            deletions, self.delete_ready, self.delete_pending = self.delete_ready, self.delete_pending, set()
            if not self.events and not self.dirty and not deletions:
                return
            events, self.events = self.events, []
            dirty, self.dirty = self.dirty, set()
            spans, self.spans = self.spans, []
            worker = self.worker
            worker.settle()  # the aggregates of every event taken (no await from here to the encoding)
            entries = worker.entries
            futures, self.futures = self.futures, []
            written: list[Pending] = []
            send = worker.table.send_changelog
            # Meta entries last: once a partition's meta entry (offset X) is in the changelog, so is every
            # other record of the flushes up to it, i.e. the partition's state is complete through X.
            for key in sorted(dirty, key=lambda k: k.endswith(_META_SUFFIX)):
                entry = entries.get(key)
                if entry is None:  # compacted or retired since: its deletion is queued
                    continue
                data = encode_entry(entry)
                futures.append(send(parse_key(key)[0], key, data, key_serializer="raw", value_serializer="raw"))
                if not isinstance(entry, KeyBlock):  # worker state only: not part of the view
                    written.append((key, entry.offset, data))
            for key in deletions:
                if key not in entries:
                    futures.append(send(parse_key(key)[0], key, None, key_serializer="raw", value_serializer="raw"))
                    if not is_key_block(key):
                        written.append((key, TOMBSTONE_VERSION, b""))
            durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            previous = self.in_flight[-1] if self.in_flight else None
            self.durable = durable
            self.in_flight.append(
                asyncio.ensure_future(self._complete(events, spans, futures, written, durable, previous))
            )

    async def _collect(self, keep: int) -> None:
        """Wait until at most ``keep`` flushes are in flight, dropping completed ones (raising their errors)."""
        in_flight = self.in_flight
        while in_flight and (in_flight[0].done() or len(in_flight) > keep):
            await in_flight.popleft()

    @property
    def idle(self) -> bool:
        """Whether every flush has completed (its errors not collected yet, perhaps)."""
        return all(f.done() for f in self.in_flight)

    async def _index_traces(self, spans: list[Any]) -> None:
        began = time.monotonic()
        await self.worker.materializer.write_traces(spans)  # never raises: failures are logged and counted
        self.worker.traces_s += time.monotonic() - began

    async def drain(self) -> None:
        """Flush and wait until every event taken so far is acked."""
        await self.flush()
        async with self.lock:
            await self._collect(0)

    async def _complete(
        self,
        events: list[Any],
        spans: list[Any],
        futures: list[Any],
        written: list[Pending],
        durable: asyncio.Future[None],
        previous: asyncio.Future[None] | None,
    ) -> None:
        worker = self.worker
        traces = asyncio.ensure_future(self._index_traces(spans))
        try:
            await asyncio.wait_for(asyncio.gather(*futures), worker.settings.changelog_timeout_s)
        except BaseException as exc:
            _exit_now(
                EXIT_CHANGELOG_FAILED, "changelog write failed (%r): exiting without acking %d events", exc, len(events)
            )
        durable.set_result(None)
        # The view may show what the changelog holds: it need not wait for the trace index (which a slow
        # Redis holds up for seconds at 50k spans/s; /metrics then lagged by as much), only the acks do.
        worker.materializer.submit(written)
        await traces
        if previous is not None:
            await previous  # events are acked in order
        stream = self.stream
        for event in events:
            await stream.ack(event)
        worker.flushes += 1


class _Worker:
    """Everything the agent, timers and rebalance hooks share."""

    def __init__(self, settings: WorkerSettings, pricer: Pricer | None) -> None:
        self.settings = settings
        self.applier = Applier(
            settings.timeline,
            pricer,
            settings.max_future_ms,
            KeyPolicy(settings.idempotency_window_ms, settings.idempotency_max_keys),
        )
        #: What the agent applied but has not added to the aggregates yet (``settle`` before any entry is read).
        self.additions = Additions(settings.timeline.caps)
        self.keys = Keys(settings.prefix, settings.state_schema)
        self.app = _new_app(settings)
        self.topic = self.app.topic(
            settings.topic, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
        )
        self.table = self.app.Table(
            table_name(settings.state_schema),
            default=None,
            key_type=bytes,
            value_type=_EntryValue,
            store=STORE_URL,
            partitions=settings.partitions,
        )
        self.dead_letters = (
            self.app.topic(
                settings.dead_letter_topic,
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.partitions,
            )
            if settings.dead_letter_topic
            else None
        )
        self.materializer = Materializer(
            settings.redis_url, self.keys, settings.trace_retention_ms, self.snapshot_owned
        )
        self.flusher = _Flusher(self)
        self.events = 0
        self.spans = 0
        self.poison = 0
        self.retries = 0  # messages skipped as retries
        self.flushes = 0
        self.apply_s = 0.0  # time spent applying messages
        self.wait_s = 0.0  # time the agent waited for the previous flush to complete
        self.traces_s = 0.0  # time flushes spent indexing traces in Redis
        self._reported = (time.monotonic(), 0, 0.0, 0.0)
        self._ticker: asyncio.Future[None] | None = None
        self._consistent_from: dict[int, int] = {}  # partition -> newest entry offset at recovery
        self._position: dict[int, int] = {}  # partition -> last offset the agent applied
        self._next: dict[int, int] = {}  # partition -> the offset its state needs next
        self._holes: dict[int, _Hole] = {}  # partition -> the hole it was sought back over
        self.rewinds = 0
        self.stalls = 0  # partitions found stalled and restarted (see STALL_S)
        self._stall_checked = time.monotonic()
        self._waiting_since: dict[int, tuple[int, float]] = {}  # partition -> (offset needed, since when)
        self.lost_to_retention = 0  # messages deleted by retention before they were counted
        self._collected_at = time.monotonic()
        self._view: ViewReader | None = None
        self.alerts: AlertService | None = None

    @property
    def entries(self) -> Any:
        """The table's store itself: writing it does not send a changelog record (the flusher does)."""
        return self.table.data

    def owned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.settings.topic}

    def settle(self) -> None:
        """Add the spans applied so far to their aggregates; entries are read or encoded only after this."""
        began = time.monotonic()
        try:
            self.additions.settle()
        except Exception:  # a bug, not bad input: stop before anything partial is flushed
            _exit_now(
                EXIT_APPLY_FAILED, "adding applied spans to their aggregates failed: exiting; replayed on restart"
            )
        self.apply_s += time.monotonic() - began

    def snapshot_owned(self) -> Iterable[Pending]:
        self.settle()
        owned = self.owned_partitions()
        for key, entry in list(self.entries.items()):
            if parse_key(key)[0] in owned and not isinstance(entry, KeyBlock):
                yield key, entry.offset, encode_entry(entry)

    async def process(self, stream: Any) -> None:
        """The agent: apply each message to the table store; flush when due."""
        noack = stream.noack()
        flusher = self.flusher
        flusher.stream = noack
        if self._ticker is None:
            # Not a Faust timer: Faust stops its timers before waiting, on shutdown, for every event taken
            # to be acked, and only flushes ack events. This task lives as long as the event loop.
            self._ticker = asyncio.ensure_future(self._tick_forever())
        entries = self.entries
        apply = self.applier.apply_deferred
        additions = self.additions
        next_offsets = self._next
        async for event in noack.events():
            message = event.message
            partition, offset = message.partition, message.offset
            expected = next_offsets.get(partition)
            if expected is not None and offset > expected and not await self._continues(message, expected):
                continue  # a hole before it: not applied, not acked, fetched again after the seek
            if self._holes and partition in self._holes and offset >= self._holes[partition].expected:
                del self._holes[partition]  # the hole is filled
            began = time.monotonic()
            try:
                applied = apply(
                    entries,
                    partition,
                    offset,
                    round(message.timestamp * 1000),
                    event.value,
                    additions,
                    header_id(message.headers),
                )
            except Exception:  # a bug, not bad input (that is poison): stop before anything partial is flushed
                _exit_now(
                    EXIT_APPLY_FAILED,
                    "applying %s[%d]@%d failed: exiting; it is replayed on restart",
                    message.topic,
                    partition,
                    offset,
                )
            self.apply_s += time.monotonic() - began
            self._position[partition] = offset
            next_offsets[partition] = offset + 1
            if applied.retry:
                self.retries += 1
                log.info("partition %d: offset %d is a retry of a message applied before: skipped", partition, offset)
            if applied.poison is not None:
                self.poison += 1
                log.warning(
                    "poison message at %s[%d]@%d skipped: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    applied.poison[:200],
                )
                if self.dead_letters is not None:  # acked with the event: a replay may copy it again
                    flusher.futures.append(
                        self.dead_letters.send_soon(
                            key=message.key,
                            value=event.value,
                            headers=[
                                ("tokentrace-source", f"{message.topic}:{message.partition}:{message.offset}".encode()),
                                ("tokentrace-error", applied.poison[:1000].encode()),
                            ],
                        )
                    )
            self.events += 1
            self.spans += applied.accepted
            flusher.events.append(event)
            flusher.dirty.update(applied.dirty)
            flusher.spans.extend(applied.spans)
            if flusher.due():
                await flusher.flush()

    async def _continues(self, message: Any, expected: int) -> bool:
        """Decide about a message that comes after a hole: the partition's state needs ``expected`` first.

        Offsets of the span topic are contiguous (no compaction, no transactions), so a hole means messages
        that were never applied here, whatever Faust thinks: its streams ack (and so commit) messages they
        skip around a rebalance, and a committed offset past the state is where it resumes. Counting on
        would lose them for good, so the partition is sought back to ``expected`` and whatever was fetched
        beyond it is dropped (not acked) until that arrives; ``tick`` seeks again if it does not (a batch
        fetched before the seek can move Faust's read offset past it again). Only when the broker says the
        log now starts past ``expected`` (retention deleted those messages) does the partition go on from
        the log start, with an error naming the offsets that could not be counted.
        """
        partition, offset = message.partition, message.offset
        hole = self._holes.get(partition)
        if hole is not None and hole.expected == expected:
            return False  # fetched before our seek: dropped here, fetched again after it
        tp = TP(message.topic, partition)
        try:
            log_start = (await self.app.consumer.earliest_offsets(tp)).get(tp, 0)
        except Exception as exc:  # never raise here: Faust would ack the event. Seek back; ask next time.
            log.warning("partition %d: could not read the log start offset: %r", partition, exc)
            log_start = 0
        if log_start > expected:
            log.log(
                logging.WARNING if expected == 0 else logging.ERROR,
                "partition %d: offsets %d..%d were deleted (topic retention) before they were counted; "
                "continuing at %d",
                partition,
                expected,
                log_start - 1,
                log_start,
            )
            self.lost_to_retention += log_start - expected
            self._next[partition] = expected = log_start
            if offset == expected:
                return True
        log.log(
            logging.WARNING if expected == 0 else logging.ERROR,
            "partition %d: offset %d arrived but its state needs %d next: seeking back to %d",
            partition,
            offset,
            expected,
            expected,
        )
        try:
            await self._seek_back(partition, expected)
        except Exception as exc:  # e.g. revoked by a rebalance under way; tick tries again
            log.warning("partition %d: seeking back failed: %r", partition, exc)
        return False

    async def _seek_back(self, partition: int, offset: int) -> None:
        self.rewinds += 1
        self._holes[partition] = _Hole(offset, time.monotonic())
        # seek_wait, not seek: Faust's seek calls aiokafka's from this thread while aiokafka's fetcher runs in
        # the consumer thread's loop; its records dict changed under the fetcher (KeyError: Faust's Fetcher
        # service crashed and the worker stopped, seen in bench/worker_scaling.py after a rebalance), and the
        # fetcher was woken from a foreign thread. seek_wait seeks in the consumer thread, then sets Faust's
        # read offset as seek does.
        await self.app.consumer.seek_wait({TP(self.settings.topic, partition): offset})

    async def _reseek_holes(self) -> None:
        """Seek again over holes that a seek did not fill within ``RESEEK_S`` (see ``_continues``)."""
        now = time.monotonic()
        owned = self.owned_partitions()
        for partition, hole in list(self._holes.items()):
            if partition not in owned or self._next.get(partition) != hole.expected:
                del self._holes[partition]  # revoked meanwhile, or filled
            elif now - hole.sought_at >= RESEEK_S:
                log.warning("partition %d: offset %d still missing: seeking back again", partition, hole.expected)
                try:
                    await self._seek_back(partition, hole.expected)
                except Exception as exc:  # e.g. revoked by a rebalance under way: on_recovered starts over
                    log.warning("partition %d: seeking back failed: %r", partition, exc)

    async def _tick_forever(self) -> None:
        interval = self.settings.flush_interval_s / 2
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception:  # a failed changelog write exits the process; anything else: log, go on
                log.exception("flush failed")

    async def _restart_stalled(self) -> None:
        """Find owned partitions whose next needed message is on the broker but never arrives; restart them.

        Seen after a restart over kept state and after a kill -9 takeover: "Worker ready", then nothing from a
        partition while its end offset grows; aiokafka's fetch position stood past the offset the state needs
        (the records were fetched, then dropped by Faust, see ``STALL_S``). Nothing is skipped by this: the
        partition is sought to the offset its state needs next, as for a hole, and messages applied already
        are skipped by offset.
        """
        now = time.monotonic()
        if now - self._stall_checked < STALL_CHECK_S:
            return
        self._stall_checked = now
        app = self.app
        if app.in_recovery or app.rebalancing:
            self._waiting_since.clear()
            return
        topic = self.settings.topic
        owned = sorted(self.owned_partitions())
        ends = await app.consumer.highwaters(*(TP(topic, p) for p in owned))  # end offsets: the next to be written
        for partition in owned:
            needed = self._next.get(partition)
            end = ends.get(TP(topic, partition))
            if needed is None or end is None or end <= needed or partition in self._holes:
                self._waiting_since.pop(partition, None)
                continue
            offset, since = self._waiting_since.setdefault(partition, (needed, now))
            if offset != needed:
                self._waiting_since[partition] = (needed, now)  # it moved: not stalled
            elif now - since >= STALL_S:
                self.stalls += 1
                log.error(
                    "partition %d: offsets %d..%d are on the broker but none arrived for %.0fs (fetch state %s): "
                    "resuming it and seeking to %d",
                    partition,
                    needed,
                    end - 1,
                    now - since,
                    faust_adapter.fetch_flow(app, topic, partition),
                    needed,
                )
                self._waiting_since[partition] = (needed, now)
                faust_adapter.resume_fetching(app, topic, partition)
                await app.consumer.seek_wait({TP(topic, partition): needed})

    async def tick(self) -> None:
        if self._holes:
            await self._reseek_holes()
        try:
            await self._restart_stalled()
        except Exception as exc:  # e.g. the broker unreachable for a moment: next time
            log.warning("checking for stalled partitions failed: %r", exc)
        flusher = self.flusher
        if flusher.due():
            await flusher.flush()
        elif flusher.in_flight and flusher.idle and not flusher.lock.locked():
            await flusher.drain()  # idle: collect the last completions (and their errors)

    async def on_recovered(self) -> None:
        """After a rebalance's table recovery: forget partitions we lost, re-materialize what we own."""
        owned = self.owned_partitions()
        entries = self.entries
        for key in [k for k in list(entries.keys()) if parse_key(k)[0] not in owned]:
            del entries[key]
        # Entries reach the changelog one by one: after a crash some are ahead of others. Until the agent
        # has replayed up to the newest of them, the partition's state is not one consistent prefix of
        # its events, and retiring a bucket then could fold in a version that replay would still complete.
        newest: dict[int, int] = {}
        for key, entry in list(entries.items()):
            if isinstance(entry, (BucketEntry, PartitionMeta)):
                partition = parse_key(key)[0]
                newest[partition] = max(newest.get(partition, -1), entry.offset)
        self._consistent_from = newest
        self._position = {}
        # Where each partition's state says processing must resume: right after its meta entry's offset.
        self._next.clear()  # the agent holds this dict
        self._holes = {}
        for partition in owned:
            meta = entries.get(meta_key(partition))
            self._next[partition] = meta.offset + 1 if isinstance(meta, PartitionMeta) else 0
        if fresh := sorted(p for p in owned if self._next[p] == 0):
            log.info(
                "partitions %s have no state of schema %d yet: counting them from the topic's first offset "
                "(a new deployment, or an upgrade to a new state schema rebuilding from the topic)",
                fresh,
                self.settings.state_schema,
            )
        log.info("recovered partitions %s (%d entries)", sorted(owned), len(entries))
        self.materializer.submit(self.snapshot_owned())

    async def housekeeping(self) -> None:
        now = time.monotonic()
        then, spans, apply_s, wait_s = self._reported
        if now - then >= 10 and self.spans > spans:
            elapsed = now - then
            log.info(
                "%d spans/s over %.0fs (applying %.0f%%, waiting for the last flush %.0f%%; traces %.1fs), %d events, "
                "%d flushes, %d seeks back over holes, %d stalled partitions restarted, %d messages lost to "
                "retention, %d spans not indexed for /traces (Redis errors)",
                (self.spans - spans) / elapsed,
                elapsed,
                100 * (self.apply_s - apply_s) / elapsed,
                100 * (self.wait_s - wait_s) / elapsed,
                self.traces_s,
                self.events,
                self.flushes,
                self.rewinds,
                self.stalls,
                self.lost_to_retention,
                self.materializer.trace_failures,
            )
            self._reported = (now, self.spans, self.apply_s, self.wait_s)
        elif now - then >= 10:
            self._reported = (now, self.spans, self.apply_s, self.wait_s)
        try:
            await self.materializer.check_epoch()
            await self.materializer.expire_traces(now_ms())
            if now - self._collected_at >= TOMBSTONE_CHECK_S:
                self._collected_at = now
                await self.materializer.collect_tombstones(TOMBSTONE_GRACE_S, time.time())
        except Exception as exc:
            log.warning("redis view: housekeeping failed: %r", exc)

    async def retire(self) -> None:
        """Compact minute buckets past the fine retention into hours; retire buckets past retention."""
        self.settle()  # compaction and retirement merge aggregates
        tiers = self.applier.tiers(now_ms())
        entries = self.entries
        flusher = self.flusher
        for partition in sorted(self.owned_partitions()):
            if not self._consistent(partition):
                continue  # still replaying after a recovery (see on_recovered)
            for written, deleted in (
                compact(entries, partition, tiers.fine_cutoff_ms, self.settings.timeline.caps),
                expire(entries, partition, tiers.horizon_ms, self.settings.timeline.caps),
            ):
                flusher.dirty.update(written)
                flusher.delete_pending.update(deleted)
            meta = entries.get(meta_key(partition))
            if isinstance(meta, PartitionMeta):  # ids no later message can use (decided by the meta entry)
                flusher.delete_pending.update(
                    collect(entries, partition, meta.offset + 1, meta.key_clock, self.applier.keys)
                )

    def _consistent(self, partition: int) -> bool:
        """Whether every entry of the partition is complete through the same offset (see on_recovered)."""
        newest = self._consistent_from.get(partition, -1)
        if self._position.get(partition, -1) >= newest:
            return True
        # An idle partition replays nothing: its committed offset (Faust's bookkeeping) passed them all.
        committed = faust_adapter.committed_offset(self.app.consumer, self.settings.topic, partition)
        return committed is not None and committed > newest

    async def on_leader_tick(self) -> None:
        """Cluster-wide work on the leader timer: one round of alert evaluation over the Redis view."""
        config = self.settings.alerts_config
        if config is None:
            return
        try:
            if self._view is None:
                view = ViewReader(
                    self.settings.redis_url,
                    self.settings.timeline,
                    prefix=self.settings.prefix,
                    state_schema=self.settings.state_schema,
                )
                await view.open()
                self._view = view
                reader = TimelineReader(lambda: view.timeline)
                self.alerts = shared_alert_service(config, view.redis, self.settings.prefix, reader)
                await self.alerts.start()
            assert self.alerts is not None
            await self.alerts.refresh()
            if not self.alerts.rule_count:
                return  # nothing to evaluate: do not keep a copy of the view up to date for nobody
            await self._view.sync()
            evaluation = await self.alerts.evaluate_async()
            if evaluation.notifications:
                log.info("alerts: %d notifications", len(evaluation.notifications))
        except Exception:
            log.exception("alert evaluation failed; trying again next tick")


def _new_app(settings: WorkerSettings) -> faust.App:
    datadir = settings.datadir or tempfile.mkdtemp(prefix="tokentrace-worker-")
    options: dict[str, Any] = {
        "broker": [f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        "store": "memory://",
        "processing_guarantee": "at_least_once",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "table_standby_replicas": 0,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": settings.commit_interval_s,
        "consumer_max_fetch_size": settings.fetch_partition_bytes,
        "stream_buffer_maxsize": settings.stream_buffer,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": max(0.5, settings.session_timeout_s / 5),
        "producer_acks": -1,
        "web_enabled": False,
        "autodiscover": False,
        "datadir": datadir,
    }
    options.update(settings.faust_options)
    return faust.App(settings.app_id, **options)


def _fetch_wait_ms(app: faust.App) -> int | None:
    """Faust hard-codes its consumer's fetch wait (1500 ms); an app built here uses its worker's setting."""
    worker = getattr(app, "tokentrace_worker", None)
    return None if worker is None else int(worker.settings.fetch_wait_ms)


def build_app(settings: WorkerSettings, pricer: Pricer | None = None) -> faust.App:
    """A Faust app running the worker (start it with ``faust.Worker(app).execute_from_commandline()``)."""
    faust_adapter.check()
    faust_adapter.use_fetch_wait(_fetch_wait_ms)
    worker = _Worker(settings, pricer)
    app = worker.app
    app.agent(worker.topic, name="tokentrace-aggregate", concurrency=1)(worker.process)
    app.timer(1.0, name="tokentrace-housekeeping")(worker.housekeeping)
    app.timer(settings.retire_interval_s, name="tokentrace-retire")(worker.retire)
    app.timer(settings.alert_interval_s, on_leader=True, name="tokentrace-alerts")(worker.on_leader_tick)
    worker.table.on_recover(worker.on_recovered)

    app.task(worker.materializer.run)

    app.tokentrace_worker = worker  # type: ignore[attr-defined]
    return app
