"""Kafka transport: spans to a Kafka topic through aiokafka, from sync or asyncio code.

How it works:

* A background thread runs an asyncio loop that owns one ``AIOKafkaProducer`` with ``acks="all"``,
  ``enable_idempotence=True`` and compression ``zstd`` if aiokafka can load it (the ``cramjam``
  package), else ``gzip`` (needs nothing extra).
* ``send()`` appends to a bounded in-memory queue and returns; a full queue or a closed transport
  drops the spans and counts them. The sender waits up to ``linger_ms`` for more spans (less when
  ``max_batch_spans`` are queued or a flush is pending), then hands a batch to the producer.
* One Kafka message is one wire-format batch (``encode_wire``). A batch goes whole to one partition, the
  one Kafka's keyed partitioner picks for its first span's trace id (the messages' key), as every producer
  does (``tokentrace.core.topic``): the many small traces of a busy service share messages (consumers pay
  per message, not per span). A message holds at most ``max_batch_spans`` spans and ``max_message_bytes``
  bytes; a single span larger than that is dropped as ``rejected``.
* A span that cannot be handed to the producer within ``delivery_timeout`` seconds of ``send()``
  (no broker reachable) is dropped and counted; aiokafka retries broker fail-overs itself.
* ``flush()`` puts a barrier in the queue and returns when everything sent before it has been acked
  by the broker or given up on. ``close()`` flushes (up to ``close_timeout``) and stops the thread.
* ``send_async()`` is for asyncio code that wants the ack: it sends right away (no queue, so no
  ordering with spans given to ``send()``) and raises ``KafkaDeliveryError`` on failure.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.codec import has_zstd

from tokentrace.core.codec import SPAN_TOPIC
from tokentrace.core.span import Span
from tokentrace.core.topic import split_messages

from .base import BaseTransport

#: ``split_messages`` is the one rule of ``tokentrace.core.topic``, re-exported here where it was first public.
__all__ = ["DEFAULT_TOPIC", "KafkaDeliveryError", "KafkaTransport", "best_compression", "split_messages"]

log = logging.getLogger(__name__)

DEFAULT_TOPIC = SPAN_TOPIC


class KafkaDeliveryError(RuntimeError):
    """``send_async`` could not get the broker's ack for its spans."""


def best_compression() -> str:
    """``"zstd"`` when aiokafka can compress with it (``cramjam`` installed), else ``"gzip"``."""
    return "zstd" if has_zstd() else "gzip"


@dataclass(slots=True)
class _Entry:
    spans: list[Span]
    deadline: float


@dataclass(slots=True, eq=False)
class _Barrier:
    done: threading.Event


class _RateLimitedLog:
    """Warn at most once per ``every`` seconds per kind of problem."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.every) >= self.every:
            self._last[kind] = now
            log.warning(msg, *args)


class KafkaTransport(BaseTransport):
    """Sends spans to Kafka from any thread without blocking the caller (see the module docstring)."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        topic: str = DEFAULT_TOPIC,
        linger_ms: float = 50.0,
        max_batch_spans: int = 500,
        max_queue_spans: int = 100_000,
        max_message_bytes: int = 900_000,
        compression: str | None = "auto",
        delivery_timeout: float = 30.0,
        close_timeout: float = 10.0,
        request_timeout_ms: int = 30_000,
        client_id: str = "tokentrace",
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.topic = topic
        self.linger = linger_ms / 1000
        self.max_batch_spans = max_batch_spans
        self.max_queue_spans = max_queue_spans
        self.max_message_bytes = max_message_bytes
        self.compression = best_compression() if compression == "auto" else compression
        self.delivery_timeout = delivery_timeout
        self.close_timeout = close_timeout
        self._producer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers if isinstance(bootstrap_servers, str) else list(bootstrap_servers),
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": self.compression,
            "linger_ms": 0,
            "max_batch_size": 1 << 20,
            "max_request_size": max(1 << 20, max_message_bytes + 4096),
            "request_timeout_ms": request_timeout_ms,
            **(producer_options or {}),
        }
        self._lock = threading.Lock()
        self._queue: deque[_Entry | _Barrier] = deque()
        self._queued = 0  # spans accepted and not yet handed to the producer or dropped
        self._closed = False
        self._finished = False  # the sender has stopped: barriers would never resolve
        self._wake_pending = False
        self._urgent_pending = False
        self._warn = _RateLimitedLog()
        self._producer: AIOKafkaProducer | None = None
        self._inflight: set[asyncio.Future[Any]] = set()
        self._barriers: set[_Barrier] = set()  # flushes waiting for in-flight messages
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._wakeup = asyncio.Event()
        self._urgent = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._connect_timeout = max(1.0, min(10.0, delivery_timeout))
        self._thread = threading.Thread(target=self._thread_main, name="tokentrace-kafka", daemon=True)
        self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- the Transport interface (any thread) ---------------------------------------------------------

    def send(self, spans: Sequence[Span]) -> None:
        """Queue spans for delivery. Never blocks on Kafka and never raises."""
        try:
            count = len(spans)
            if count == 0:
                return
            accepted = wake = urgent = False
            with self._lock:
                if not self._closed and self._queued + count <= self.max_queue_spans:
                    accepted = True
                    self._queue.append(_Entry(list(spans), time.monotonic() + self.delivery_timeout))
                    self._queued += count
                    wake = not self._wake_pending
                    urgent = self._queued >= self.max_batch_spans and not self._urgent_pending
                    self._wake_pending = self._wake_pending or wake
                    self._urgent_pending = self._urgent_pending or urgent
            if not accepted:
                self._count("dropped", count)
                self._warn.warning("queue", "kafka transport: queue full or closed, dropped %d spans", count)
            elif wake or urgent:
                self._signal(urgent)
        except Exception:  # pragma: no cover - a bug must not reach the traced code
            log.exception("kafka transport: send failed")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until spans sent so far are acked or given up on, at most ``timeout`` seconds."""
        if not self._thread.is_alive():
            return
        barrier = _Barrier(threading.Event())
        with self._lock:
            if self._finished:
                return
            self._queue.append(barrier)
        self._signal(urgent=True)
        barrier.done.wait(timeout)

    def close(self) -> None:
        """Flush (at most ``close_timeout`` s), then stop the producer and the thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        began = time.monotonic()
        self.flush(self.close_timeout)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(max(1.0, self.close_timeout - (time.monotonic() - began)) + 5.0)

    async def send_async(self, spans: Sequence[Span]) -> None:
        """Send spans now and wait for the broker's acks. Raises ``KafkaDeliveryError`` on failure."""
        if self._closed or not self._thread.is_alive():
            self._count("dropped", len(spans))
            raise KafkaDeliveryError("kafka transport is closed")
        future = asyncio.run_coroutine_threadsafe(self._deliver_now(list(spans)), self._loop)
        await asyncio.wrap_future(future)

    def _queue_depth(self) -> int:
        return self._queued

    def _signal(self, urgent: bool) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the transport is closed
            self._loop.call_soon_threadsafe(self._on_signal, urgent)

    # -- the background loop --------------------------------------------------------------------------

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except Exception:  # pragma: no cover - logged, the transport then drops everything
            log.exception("kafka transport: sender thread crashed")
        finally:
            with self._lock:
                self._closed = True
            self._loop.close()

    def _on_signal(self, urgent: bool) -> None:
        self._wakeup.set()
        if urgent:
            self._urgent.set()

    async def _main(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                wake = asyncio.ensure_future(self._wakeup.wait())
                await asyncio.wait([wake, stop], return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                if stop.done():
                    return
                if not self._urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), self.linger)
                with self._lock:
                    self._wake_pending = self._urgent_pending = False
                self._wakeup.clear()
                self._urgent.clear()
                drain = asyncio.ensure_future(self._drain())
                await asyncio.wait([drain, stop], return_when=asyncio.FIRST_COMPLETED)
                if not drain.done():  # closing while Kafka is stuck: _shutdown counts what is left
                    drain.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await drain
                    return
                drain.result()
        finally:
            stop.cancel()
            await self._shutdown()

    async def _drain(self) -> None:
        """Hand everything queued to the producer, batch by batch, resolving barriers on the way."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                head = self._queue[0]
                if isinstance(head, _Barrier):
                    self._queue.popleft()
                    batch: list[_Entry] = []
                else:
                    batch = self._take_batch()
            if isinstance(head, _Barrier):
                self._resolve_when_settled(head)
            else:
                await self._send_batch(batch)

    def _take_batch(self) -> list[_Entry]:
        """Pop entries (up to ``max_batch_spans`` spans, at least one entry) until a barrier. Under lock."""
        batch: list[_Entry] = []
        size = 0
        while self._queue and isinstance(self._queue[0], _Entry):
            entry = self._queue[0]
            assert isinstance(entry, _Entry)
            if batch and size + len(entry.spans) > self.max_batch_spans:
                break
            batch.append(entry)
            size += len(entry.spans)
            self._queue.popleft()
        return batch

    def _resolve_when_settled(self, barrier: _Barrier) -> None:
        pending = set(self._inflight)
        if not pending:
            barrier.done.set()
            return
        self._barriers.add(barrier)

        async def wait_then_set() -> None:
            await asyncio.wait(pending)
            barrier.done.set()
            self._barriers.discard(barrier)

        task = self._loop.create_task(wait_then_set())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_batch(self, batch: list[_Entry]) -> None:
        """Hand a batch to the producer, reconnecting until each entry's deadline; drop expired ones."""
        attempt = 0
        while (producer := await self._connected_producer()) is None:
            self._count("failed_attempts", sum(len(e.spans) for e in batch))
            if attempt:
                self._count("retries")
            attempt += 1
            now = time.monotonic()
            expired = sum(len(e.spans) for e in batch if e.deadline <= now)
            batch = [e for e in batch if e.deadline > now]
            self._give_up(expired, "no broker reachable", queued=True)
            if not batch:
                return
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0, max(0.0, min(e.deadline for e in batch) - now)))
        await self._produce(producer, [span for entry in batch for span in entry.spans], queued=True)

    async def _produce(
        self, producer: AIOKafkaProducer, spans: list[Span], *, queued: bool
    ) -> tuple[list[asyncio.Future[Any]], Exception | None]:
        """Hand spans to aiokafka as messages. Returns the delivery futures (they count themselves when
        they settle) and the error that stopped the hand-over, if any (its spans are counted as dropped).
        ``queued``: the spans come from the queue (keep ``queue_depth`` right)."""
        try:
            partitions = sorted(await producer.partitions_for(self.topic))
        except Exception as exc:
            self._give_up(len(spans), f"no metadata for {self.topic}: {exc!r}", queued=queued, failed=True)
            return [], exc
        messages, too_large = split_messages(spans, partitions, self.max_batch_spans, self.max_message_bytes)
        if too_large:
            self._count("rejected", len(too_large))
            self._warn.warning("size", "kafka transport: %d spans too large for one message", len(too_large))
            if queued:
                self._dequeued(len(too_large))
        futures: list[asyncio.Future[Any]] = []
        for i, message in enumerate(messages):
            try:
                future = await producer.send(self.topic, message.value, key=message.key, partition=message.partition)
            except Exception as exc:
                rest = sum(m.count for m in messages[i:])
                self._give_up(rest, f"produce failed: {exc!r}", queued=queued, failed=True)
                return futures, exc
            if queued:
                self._dequeued(message.count)
            self._inflight.add(future)
            future.add_done_callback(functools.partial(self._settled, message.count))
            futures.append(future)
        error = ValueError(f"{len(too_large)} spans too large for one message") if too_large else None
        return futures, error

    def _settled(self, count: int, future: asyncio.Future[Any]) -> None:
        self._inflight.discard(future)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            self._give_up(count, f"delivery failed: {error!r}", queued=False, failed=True)
        else:
            self._count("sent", count)

    def _dequeued(self, count: int) -> None:
        with self._lock:
            self._queued -= count

    def _give_up(self, count: int, why: str, *, queued: bool, failed: bool = False) -> None:
        """Count ``count`` spans as dropped (and as a failed attempt when ``failed``)."""
        if not count:
            return
        if failed:
            self._count("failed_attempts", count)
        self._count("dropped", count)
        if queued:
            self._dequeued(count)
        self._warn.warning(why.split(":")[0], "kafka transport: dropped %d spans (%s)", count, why)

    async def _connected_producer(self) -> AIOKafkaProducer | None:
        """The started producer, starting one if needed; None if no broker answers."""
        async with self._connect_lock:
            if self._producer is not None:
                return self._producer
            producer = AIOKafkaProducer(**self._producer_options)
            try:
                await asyncio.wait_for(producer.start(), self._connect_timeout)
            except Exception as exc:
                servers = self._producer_options["bootstrap_servers"]
                self._warn.warning("connect", "kafka transport: cannot reach %s: %r", servers, exc)
                with contextlib.suppress(Exception):
                    await producer.stop()
                return None
            self._producer = producer
            return producer

    async def _deliver_now(self, spans: list[Span]) -> None:
        producer = await self._connected_producer()
        if producer is None:
            self._give_up(len(spans), "no broker reachable", queued=False, failed=True)
            raise KafkaDeliveryError(f"cannot reach Kafka at {self._producer_options['bootstrap_servers']}")
        futures, error = await self._produce(producer, spans, queued=False)
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if error is not None or failures:
            raise KafkaDeliveryError(f"delivery failed: {error or failures[0]!r}")

    async def _shutdown(self) -> None:
        """Drop what was never handed to Kafka, stop the producer (bounded), release every flush."""
        with self._lock:
            self._closed = self._finished = True
            self._barriers.update(item for item in self._queue if isinstance(item, _Barrier))
            self._queue.clear()
            leftover = self._queued
        self._give_up(leftover, "transport closed", queued=True)
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), max(1.0, self.close_timeout))
            except Exception as exc:
                log.warning("kafka transport: stopping the producer failed: %r", exc)
        for future in list(self._inflight):
            future.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)  # let the done-callbacks of cancelled futures count their spans
        for barrier in self._barriers:
            barrier.done.set()


def _close_at_exit(ref: weakref.ref[KafkaTransport]) -> None:
    transport = ref()
    if transport is not None:
        transport.close()
