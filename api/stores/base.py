"""The store interface the HTTP handlers use; they never know which implementation they have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from tokentrace.core.buckets import Projection
from tokentrace.core.span import Span
from tokentrace.core.timeline import LifetimeParts, Timeline, TimelineSettings
from tokentrace.core.traces import TraceFilter

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = ["Store", "StoreHealth", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store cannot accept or serve data right now (disk failure, broker unreachable, ...)."""


class StoreHealth(msgspec.Struct):
    healthy: bool
    reason: str | None
    span_count: int
    queue_depth: int
    transport: str
    #: Takes writes and serves reads, but some data was found damaged (why, and where it was put).
    degraded: str | None = None


class Store(Protocol):
    """State behind the API: spans in, aggregates and traces out. The wiring (``api.embedded``,
    ``api.distributed``) opens it before serving, closes it after, and evaluates alert rules on ``timeline``."""

    settings: TimelineSettings

    @property
    def timeline(self) -> Timeline:
        """The aggregates as a timeline (this store's own, or its latest copy of the shared view)."""

    async def open(self) -> None:
        """Load or connect; called once before anything else."""

    async def close(self) -> None:
        """Flush what must be kept and release files and connections; called once at the end."""

    async def ingest(self, spans: list[Span], idempotency_key: str | None = None) -> None:
        """Make ``spans`` durable and counted; return only once they are. Raises StoreUnavailable.

        A batch whose ``idempotency_key`` was counted before (within the store's window) is not counted again.
        """

    #: Whether ``ingest_compiled`` takes batches: the ``POST /spans`` handler then compiles a body straight to
    #: its record and batch (``core.ingest.compile_body``) instead of decoding spans for ``ingest``.
    takes_compiled: bool

    async def ingest_compiled(self, wire: bytes, batch: WireBatch, idempotency_key: str | None = None) -> None:
        """``ingest`` of the spans ``wire`` holds (``encode_wire``'s message) and ``batch`` compiles (only where
        ``takes_compiled``)."""

    def oldest_allowed_ms(self, now_ms: int) -> int:
        """Spans that started before this are outside retention and are rejected."""

    async def query(self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]) -> Projection:
        """Aggregates of ``[start_ms, end_ms)`` grouped by ``groupby``, filtered by ``where``."""

    async def series(
        self, intervals: list[tuple[int, int]], groupby: str | None, where: dict[str, str]
    ) -> list[Projection]:
        """``query`` of each ``[start, end)`` interval, all read from one consistent state."""

    async def attribute_keys(self, start_ms: int, end_ms: int) -> set[str]:
        """Attribute keys the aggregates of ``[start_ms, end_ms)`` are grouped by."""

    async def lifetime(self, groupby: str | None) -> Projection:
        """Everything ever counted (monotonic, for Prometheus counters)."""

    async def query_parts(
        self, start_ms: int, end_ms: int, groupby: str | None, where: dict[str, str]
    ) -> LifetimeParts:
        """``query`` as projections that nothing changes any more, to be summed off the event loop."""

    async def lifetime_parts(self, groupby: str | None) -> LifetimeParts:
        """``lifetime`` as projections that nothing changes any more, to be summed (``LifetimeParts.total``)
        off the event loop."""

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        """One trace with its spans, or None."""

    async def search_traces(self, where: TraceFilter, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """Trace summaries matching ``where``, newest first: (total, page)."""

    async def recent_spans(self, limit: int) -> list[Span]:
        """The newest spans."""

    async def health(self) -> StoreHealth:
        """Whether the store can take writes, and its counters."""
