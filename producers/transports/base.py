"""The transport contract: where finished spans go.

A transport takes batches of finished spans from the tracer and delivers them to a sink (stdout, a file,
an HTTP endpoint, Kafka). Every transport keeps three promises to the code being traced:

* ``send(spans)`` never blocks on the sink for long and never raises: delivery problems are logged and
  counted, never turned into exceptions in the caller's request path.
* ``flush(timeout)`` waits (at most ``timeout`` seconds, ``None`` = until done) until what was sent so far
  has been delivered or given up on.
* ``close()`` flushes what it reasonably can and releases resources; ``send`` after ``close`` drops and
  counts the spans.

Spans handed to ``send`` belong to the transport from then on: callers must not mutate them afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from tokentrace.core.span import Span

__all__ = ["BaseTransport", "SupportsStats", "Transport", "TransportStats"]


@runtime_checkable
class Transport(Protocol):
    """What the tracer needs from a sink. Implementations must be safe to call from any thread."""

    def send(self, spans: Sequence[Span]) -> None:
        """Hand over finished spans. Never blocks for long, never raises into the caller."""
        ...

    def flush(self, timeout: float | None = None) -> None:
        """Wait until spans sent so far are delivered or given up on, at most ``timeout`` seconds."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A snapshot of a transport's counters (all counts are spans, except ``retries``).

    ``sent``: delivered (for HTTP: accepted by the server). ``dropped``: never delivered because the
    queue was full, the transport was closed, or retries ran out. ``rejected``: refused by the sink as
    invalid (e.g. an HTTP 4xx). ``failed_attempts``: delivery attempts that failed (a retried batch counts
    once per attempt). ``retries``: attempts that were retries. ``queue_depth``: spans waiting to be sent.
    """

    name: str
    sent: int = 0
    dropped: int = 0
    rejected: int = 0
    failed_attempts: int = 0
    retries: int = 0
    queue_depth: int = 0


@runtime_checkable
class SupportsStats(Protocol):
    """A transport that reports counters (all of ours do; ``/health`` and ``MultiTransport`` read them)."""

    def stats(self) -> TransportStats: ...


class BaseTransport:
    """Optional base class: counters, context-manager support and a no-op ``flush``.

    Subclasses implement ``send`` (and ``close`` when they hold resources) and bump counters with
    ``_count``; ``stats()`` then reports them. Using this class is not required by the ``Transport``
    protocol.
    """

    #: Short name reported by ``stats()`` and ``/health`` (``"file"``, ``"http"``, ...).
    name = "transport"

    def __init__(self) -> None:
        self._counter_lock = threading.Lock()
        self._counters = {"sent": 0, "dropped": 0, "rejected": 0, "failed_attempts": 0, "retries": 0}

    def send(self, spans: Sequence[Span]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def flush(self, timeout: float | None = None) -> None:
        """Nothing is buffered by default."""

    def close(self) -> None:
        """Nothing to release by default."""

    def stats(self) -> TransportStats:
        """A consistent snapshot of this transport's counters."""
        with self._counter_lock:
            counters = dict(self._counters)
        return TransportStats(name=self.name, queue_depth=self._queue_depth(), **counters)

    def _queue_depth(self) -> int:
        return 0

    def _count(self, counter: str, n: int = 1) -> None:
        with self._counter_lock:
            self._counters[counter] += n

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
