"""The delivery queue: notifications go out in the background, with retries, never blocking evaluation.

:meth:`Dispatcher.submit` only enqueues. Each rule has its own FIFO drained by its own task, so one
rule's notifications arrive in order (a resolution never overtakes its firing) while a slow or failing
receiver delays only its own rules. Failed attempts are retried with exponential backoff and jitter (or
the server's ``Retry-After``); outcomes are counted per rule in :class:`DeliveryStats`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable

import msgspec

from tokentrace.alerting.sinks import DeliveryFailed, Sink
from tokentrace.core.alerts import Delivery, Notification
from tokentrace.core.timefmt import now_ms

__all__ = ["DeliveryStats", "Dispatcher", "RetryPolicy"]

logger = logging.getLogger(__name__)


class RetryPolicy(msgspec.Struct, frozen=True):
    """Wait before retry n (from 0): min(max_s, base_s * factor**n), minus a random share up to ``jitter``."""

    base_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt``."""
        full = min(self.max_s, self.base_s * self.factor**attempt)
        return full * (1 - self.jitter * rng.random())


class DeliveryStats(msgspec.Struct):
    """Delivery outcomes for one rule since the process started."""

    delivered: int = 0
    #: Notifications given up on after all retries (or a non-retryable answer).
    failed: int = 0
    #: Individual attempts that failed, retried or not.
    failed_attempts: int = 0
    #: Notifications dropped because the queue was full.
    dropped: int = 0
    last_error: str | None = None
    last_error_ms: int | None = None


class Dispatcher:
    """Delivers notifications through the sink a :class:`Delivery` maps to."""

    def __init__(
        self,
        sinks: Callable[[Delivery], Sink],
        *,
        retry: RetryPolicy | None = None,
        max_pending: int = 10_000,
        concurrency: int = 32,
        rng: random.Random | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sinks = sinks
        self._retry = retry or RetryPolicy()
        self._max_pending = max_pending
        self._slots = asyncio.Semaphore(concurrency)
        self._rng = rng or random.Random()
        self._clock = clock
        self._queues: dict[str, collections.deque[tuple[Notification, Delivery]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stats: dict[str, DeliveryStats] = {}
        self._pending = 0

    @property
    def pending(self) -> int:
        """Notifications queued or in flight."""
        return self._pending

    def stats(self, rule: str) -> DeliveryStats:
        """A copy of the counters for ``rule`` (zeros if nothing was sent)."""
        return msgspec.structs.replace(self._stats.get(rule) or DeliveryStats())

    def submit(self, note: Notification, delivery: Delivery) -> bool:
        """Queue ``note`` without waiting; False (and counted as dropped) when the queue is full.

        Must be called from the event loop the dispatcher delivers on.
        """
        name = note.rule.name
        if self._pending >= self._max_pending:
            stats = self._stats.setdefault(name, DeliveryStats())
            stats.dropped += 1
            logger.error(
                "alert %s: delivery queue full (%d), %s notification dropped",
                name,
                self._pending,
                note.status,
            )
            return False
        self._pending += 1
        self._queues.setdefault(name, collections.deque()).append((note, delivery))
        if name not in self._tasks:
            self._tasks[name] = asyncio.get_running_loop().create_task(self._drain(name), name=f"alert-delivery:{name}")
        return True

    async def _drain(self, name: str) -> None:
        queue = self._queues[name]
        try:
            while queue:
                note, delivery = queue[0]
                try:
                    async with self._slots:
                        await self._deliver(note, delivery)
                except asyncio.CancelledError:
                    self._stats.setdefault(name, DeliveryStats()).failed += 1
                    raise
                finally:
                    queue.popleft()
                    self._pending -= 1
        finally:
            # No await between the last emptiness check and here, so submit() cannot slip in between.
            del self._tasks[name]
            if not queue:
                del self._queues[name]

    async def _deliver(self, note: Notification, delivery: Delivery) -> None:
        stats = self._stats.setdefault(note.rule.name, DeliveryStats())
        sink = self._sinks(delivery)
        attempt = 0
        while True:
            try:
                await sink.send(note)
            except Exception as exc:
                failure = exc if isinstance(exc, DeliveryFailed) else None
                stats.failed_attempts += 1
                stats.last_error = str(exc) if failure else f"{type(exc).__name__}: {exc}"
                stats.last_error_ms = self._clock()
                if failure is None or not failure.retryable or attempt >= sink.max_retries:
                    stats.failed += 1
                    logger.warning(
                        "alert %s: %s notification not delivered after %d attempt(s): %s",
                        note.rule.name,
                        note.status,
                        attempt + 1,
                        stats.last_error,
                    )
                    return
                delay = self._retry.delay(attempt, self._rng)
                if failure.retry_after_s is not None:
                    delay = min(self._retry.max_s, max(delay, failure.retry_after_s))
                attempt += 1
                await asyncio.sleep(delay)
            else:
                stats.delivered += 1
                return

    async def drain(self) -> None:
        """Wait until everything queued so far has been delivered or given up on."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Give pending deliveries ``timeout_s`` to finish, then cancel the rest (counted as failed)."""
        try:
            await asyncio.wait_for(self.drain(), timeout_s)
        except TimeoutError:
            for task in list(self._tasks.values()):
                task.cancel()
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
            if self._pending:
                logger.warning("alert delivery: %d notification(s) abandoned at shutdown", self._pending)
            for name, queue in self._queues.items():
                self._stats.setdefault(name, DeliveryStats()).failed += len(queue)
            self._queues.clear()
            self._pending = 0
