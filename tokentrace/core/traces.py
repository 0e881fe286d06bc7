"""A bounded index of recent traces: spans grouped by trace id, newest first, with filters.

Bounded two ways: at most ``max_spans`` spans (whole traces are evicted, oldest first, so a trace is
never shown half), and traces that ended more than ``retention_ms`` ago are dropped.

The index keeps each span as its MessagePack (``IndexedTrace``: the bytes the write-ahead log holds for it,
sliced from the batch's message), decoded when a trace is read; searches and recent spans read the bytes
(``native.match_spans``, ``native.newest_spans``). As objects, the 100,000 spans of a full index were some twenty
Python objects each: a server that took 200k spans held 227 MiB of RSS, 159 MiB with them encoded
(bench/RESULTS.md), for ~0.4k more instructions a span (a bytes object each).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from tokentrace.core import native
from tokentrace.core.aggregate import from_nanos, to_nanos
from tokentrace.core.codec import decode_wire
from tokentrace.core.span import AttributeValue, Span
from tokentrace.core.timefmt import format_ms, parse_rfc3339_ms

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = ["IndexedTrace", "StoredTrace", "TraceFilter", "TraceIndex"]

_STATUS_RANK = {"ok": 0, "timeout": 1, "error": 2}


class SpanLabels(Protocol):
    """What ``TraceFilter.matches_span`` reads of a span."""

    @property
    def model(self) -> str: ...
    @property
    def caller(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def attributes(self) -> dict[str, AttributeValue]: ...


class TraceFilter(msgspec.Struct, frozen=True):
    """``GET /traces`` filters: a trace matches when one of its spans matches all span-level filters."""

    attributes: tuple[tuple[str, str], ...] = ()
    model: str | None = None
    caller: str | None = None
    status: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def filters_spans(self) -> bool:
        """Whether any filter is on spans (not only on the trace's start)."""
        return bool(self.attributes) or self.model is not None or self.caller is not None or self.status is not None

    def matches_span(self, span: SpanLabels) -> bool:
        if self.model is not None and span.model != self.model:
            return False
        if self.caller is not None and span.caller != self.caller:
            return False
        if self.status is not None and span.status != self.status:
            return False
        for key, value in self.attributes:
            raw = span.attributes.get(key)
            if raw is None or _text(raw) != value:
                return False
        return True


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


#: A new trace's span list: ``[]``, untracked by the cycle collector where the compiled module is.
_span_list: Callable[[], list[Span]] = (
    partial(native.untracked_zeros, 0) if native.untracked_zeros is not None else list  # type: ignore[assignment]
)


class StoredTrace(msgspec.Struct, gc=False):
    """One trace as the server keeps it for ``GET /traces``: its spans and running totals over them.
    (The SDK's ``tokentrace.producers.Trace`` is the other side: a run being recorded.)

    ``gc=False``: the index holds 100,000 spans by default, and its traces, tracked, made every full collection
    of an ingesting server walk them; their span lists are untracked too where the compiled module is (a list
    of ``gc=False`` spans cannot be part of a reference cycle either: bench/gc_pause.py).
    """

    trace_id: str
    spans: list[Span] = msgspec.field(default_factory=_span_list)
    started_ms: int = 2**62
    ended_ms: int = 0
    cost_nanos: int = 0
    priced: int = 0
    total_tokens: int = 0
    status: str = "ok"

    def add(self, span: Span) -> None:
        self.spans.append(span)
        _count(self, span)

    @property
    def name(self) -> str:
        for span in self.spans:
            if span.parent_span_id is None:
                return span.name
        return self.spans[0].name if self.spans else ""

    def summary(self) -> dict[str, Any]:
        """The trace without its spans, as ``GET /traces`` lists it."""
        return _summary(self.trace_id, self.name, len(self.spans), self)

    def body(self) -> dict[str, Any]:
        """The trace with its spans in start order, as ``GET /traces/{id}`` returns it."""
        spans = sorted(self.spans, key=lambda s: s.started_at or "")
        return {**self.summary(), "spans": spans}


class _Labels(msgspec.Struct, gc=False):
    """The fields of a stored span that ``TraceFilter`` reads, decoded without the rest (nor ``__post_init__``)."""

    model: str = ""
    caller: str = ""
    status: str = "ok"
    attributes: dict[str, AttributeValue] = {}


class _Start(msgspec.Struct, gc=False):
    """A stored span's ``started_at`` alone (``recent_spans`` orders by it)."""

    started_at: str | None = None


_span_decoder = msgspec.msgpack.Decoder(Span)
_labels_decoder = msgspec.msgpack.Decoder(_Labels)
_start_decoder = msgspec.msgpack.Decoder(_Start)
_span_encoder = msgspec.msgpack.Encoder()
#: A new trace's encoded spans: ``[]``, untracked by the cycle collector where the compiled module is.
_encoded_list: Callable[[], list[bytes | Span]] = _span_list  # type: ignore[assignment]


class IndexedTrace(msgspec.Struct, gc=False):
    """One trace as ``TraceIndex`` keeps it: its spans encoded (MessagePack, as the write-ahead log holds each),
    its totals as ``StoredTrace`` keeps them, and its name (its first root span's, else its first span's).
    ``stored()`` decodes it; ``summary()`` needs no decoding.

    A span without ``latency_ms`` is kept as it is: stamped, it has both timestamps, from which its decoded copy
    would derive a latency it was not given (``GET /traces/{id}`` shows none). The compiled batches never hold
    one (``native.compile_spans`` leaves such a batch to ``add``)."""

    trace_id: str
    spans: list[bytes | Span] = msgspec.field(default_factory=_encoded_list)
    started_ms: int = 2**62
    ended_ms: int = 0
    cost_nanos: int = 0
    priced: int = 0
    total_tokens: int = 0
    status: str = "ok"
    name: str = ""
    rooted: bool = False

    def add(self, span: Span) -> None:
        """Add ``span`` (as ``StoredTrace.add``), encoded as the log encodes it."""
        if not self.rooted and (span.parent_span_id is None or not self.spans):
            self.name = span.name
            self.rooted = span.parent_span_id is None
        self.spans.append(span if span.latency_ms is None else _span_encoder.encode(span))
        _count(self, span)

    def decoded(self) -> list[Span]:
        """The trace's spans, in the order they were added."""
        return [_decoded(kept) for kept in self.spans]

    def stored(self) -> StoredTrace:
        """The trace with its spans decoded."""
        return StoredTrace(
            self.trace_id,
            self.decoded(),
            self.started_ms,
            self.ended_ms,
            self.cost_nanos,
            self.priced,
            self.total_tokens,
            self.status,
        )

    def summary(self) -> dict[str, Any]:
        """``StoredTrace.summary`` of the trace, read from what it keeps."""
        return _summary(self.trace_id, self.name, len(self.spans), self)

    def body(self) -> dict[str, Any]:
        """``StoredTrace.body`` of the trace."""
        return self.stored().body()

    def matches(self, where: TraceFilter) -> bool:
        """Whether one of the trace's spans matches ``where``'s span filters (read from their bytes by the
        compiled ``match_spans`` where it can: 100,000 spans decoded took 120-145 ms)."""
        compiled = native.match_spans
        if compiled is not None:
            found = compiled(self.spans, where.model, where.caller, where.status, where.attributes)
            if found is not None:
                return found
        return any(where.matches_span(_labels(kept)) for kept in self.spans)


def _decoded(kept: bytes | Span) -> Span:
    return _span_decoder.decode(kept) if isinstance(kept, bytes) else kept


def _labels(kept: bytes | Span) -> SpanLabels:
    return _labels_decoder.decode(kept) if isinstance(kept, bytes) else kept


def _started_at(kept: bytes | Span) -> str:
    return (_start_decoder.decode(kept) if isinstance(kept, bytes) else kept).started_at or ""


class _Totals(Protocol):
    started_ms: int
    ended_ms: int
    cost_nanos: int
    priced: int
    total_tokens: int
    status: str


def _count(totals: _Totals, span: Span) -> None:
    """Add ``span`` to a trace's totals: earliest start, latest end, cost, priced spans, tokens, worst status."""
    if span.started_at is not None:
        totals.started_ms = min(totals.started_ms, parse_rfc3339_ms(span.started_at))
    if span.ended_at is not None:
        totals.ended_ms = max(totals.ended_ms, parse_rfc3339_ms(span.ended_at))
    if span.cost_usd is not None:
        totals.cost_nanos += to_nanos(span.cost_usd)
        totals.priced += 1
    totals.total_tokens += int(span.total_tokens or 0)
    if _STATUS_RANK[span.status] > _STATUS_RANK[totals.status]:
        totals.status = span.status


def _summary(trace_id: str, name: str, span_count: int, totals: _Totals) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "name": name,
        "started_at": format_ms(totals.started_ms) if span_count else None,
        "ended_at": format_ms(totals.ended_ms) if totals.ended_ms else None,
        "total_cost_usd": round(from_nanos(totals.cost_nanos), 9) if totals.priced else None,
        "total_tokens": totals.total_tokens,
        "span_count": span_count,
        "status": totals.status,
    }


class TraceIndex:
    """Recent traces, bounded by span count and retention (``storage.max_spans``, ``storage.trace_retention``).

    First in, first out: a trace keeps its place however many spans come to it later, so the traces are a dict by
    id (in insertion order) and a queue, oldest first, to evict from: half the table probes of an ``OrderedDict``
    for a new trace and an eviction, its costliest steps in a full index (each probe a cache miss)."""

    def __init__(self, max_spans: int, retention_ms: int) -> None:
        self.max_spans = max_spans
        self.retention_ms = retention_ms
        self._traces: dict[str, IndexedTrace] = {}
        self._order: deque[IndexedTrace] = deque()
        self.span_count = 0
        self.evicted_traces = 0

    def add(self, span: Span) -> None:
        trace = self._traces.get(span.trace_id)
        if trace is None:
            trace = self._traces[span.trace_id] = IndexedTrace(span.trace_id)
            self._order.append(trace)
        trace.add(span)
        self.span_count += 1
        if self.span_count > self.max_spans:
            self._evict_excess()

    def add_batch(self, spans: list[Span] | None, batch: WireBatch, payload: bytes, at_ms: int = 0) -> None:
        """``add_spans`` of ``spans`` given their compiled batch and the message it was read from or written to
        (``native.decode_batch``, ``native.compile_spans``, ``native.compile_json``: the same spans): the same
        traces, totals, order and encoded spans (sliced from ``payload``), with one compiled step per trace, not
        per span (``native.add_to_traces``). ``spans`` None: those ``payload`` holds (decoded only if ``add``
        must run).

        When the spans push the index over ``max_spans``, ``add`` would evict the oldest traces holding the
        excess as it went; they are found first, in one pass (``_oldest``). When one of them is a trace the
        spans add to (it would come back holding only its later spans), or the index's traces do not hold the
        excess, ``add`` runs span by span instead.
        """
        horizon = self._horizon(at_ms)
        compiled, take = native.add_to_traces, native.traces_take
        if compiled is None or take is None:
            self.add_spans(decode_wire(payload) if spans is None else spans, at_ms)
            return
        count = take(self._traces, batch, horizon)
        if not count:
            return  # all left out: ``add`` would not run, nor evict (the index is over ``max_spans`` when its
            # newest trace alone holds more)
        excess = self.span_count + count - self.max_spans
        evicted: tuple[int, int] | None = (0, 0)
        if excess > 0:
            evicted = self._oldest(excess, batch) if count <= self.max_spans else None
        if evicted is None:
            self.add_spans(decode_wire(payload) if spans is None else spans, at_ms)
            return
        self._order.extend(compiled(self._traces, IndexedTrace, payload, batch, horizon))
        traces, freed = evicted
        table, oldest = self._traces, self._order.popleft
        for _ in range(traces):
            del table[oldest().trace_id]
        self.span_count += count - freed
        self.evicted_traces += traces

    def add_spans(self, spans: Sequence[Span], at_ms: int = 0) -> None:
        """``add`` of each of ``spans`` (a batch accepted at ``at_ms``) but those of the traces the index leaves
        out: one it does not hold whose spans in the batch all ended before the trace retention at ``at_ms`` (a
        back-fill's: ``expire`` drops traces from the oldest added on, so such traces would stay, past their
        retention, and push the recent ones out of the index). ``at_ms`` 0: every span."""
        horizon = self._horizon(at_ms)
        if horizon is not None:
            batch: dict[str, IndexedTrace] = {}
            for span in spans:
                totals = batch.get(span.trace_id)
                if totals is None:
                    totals = batch[span.trace_id] = IndexedTrace(span.trace_id)
                _count(totals, span)
            table = self._traces
            kept = {
                trace_id
                for trace_id, totals in batch.items()
                if max(totals.ended_ms, totals.started_ms) >= horizon or trace_id in table
            }
            spans = [span for span in spans if span.trace_id in kept]
        for span in spans:
            self.add(span)

    def _horizon(self, at_ms: int) -> int | None:
        """Where the trace retention stands at ``at_ms``; None for 0 (no bound)."""
        return at_ms - self.retention_ms if at_ms else None

    def _oldest(self, excess: int, batch: WireBatch) -> tuple[int, int] | None:
        """How many of the oldest traces hold ``excess`` spans, and their spans: ``(traces, spans)``; None when
        one of them is a trace of ``batch`` or all of them hold fewer. Compiled where it can be
        (``native.oldest_traces``)."""
        compiled = native.oldest_traces
        if compiled is not None:
            return compiled(self._order, excess, batch)
        freed = 0
        oldest: list[str] = []
        for traces, trace in enumerate(self._order, 1):
            oldest.append(trace.trace_id)
            freed += len(trace.spans)
            if freed >= excess:
                return None if batch.touches(oldest) else (traces, freed)
        return None

    def _evict_excess(self) -> None:
        """Evict the oldest traces until at most ``max_spans`` spans are kept (the newest trace stays, however
        many spans it holds)."""
        while self.span_count > self.max_spans and len(self._traces) > 1:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        trace = self._order.popleft()
        del self._traces[trace.trace_id]
        self.span_count -= len(trace.spans)
        self.evicted_traces += 1

    def expire(self, now_ms: int) -> None:
        """Drop traces (oldest first) that ended before the retention horizon."""
        horizon = now_ms - self.retention_ms
        while self._order:
            trace = self._order[0]
            if max(trace.ended_ms, trace.started_ms) >= horizon:
                break
            self._evict_oldest()

    def get(self, trace_id: str) -> IndexedTrace | None:
        return self._traces.get(trace_id)

    def __len__(self) -> int:
        return len(self._traces)

    def spans(self) -> Iterator[bytes | Span]:
        """Every span kept, encoded (MessagePack, as the log holds it) or as it is (``IndexedTrace``), oldest
        trace first (for snapshots)."""
        for trace in self._traces.values():
            yield from trace.spans

    def search(self, where: TraceFilter, limit: int, offset: int) -> tuple[int, list[IndexedTrace]]:
        """Matching traces, newest start first: (total matches, the requested page)."""
        matched = [t for t in self._traces.values() if _trace_matches(t, where)]
        matched.sort(key=lambda t: t.started_ms, reverse=True)
        return len(matched), matched[offset : offset + limit]

    def recent_spans(self, limit: int) -> list[Span]:
        """The newest spans by start time (``GET /traces/recent``, the MIST-era answer); chosen by the compiled
        ``newest_spans`` from the spans' bytes where it can (decoding 100,000 spans' starts took 115 ms)."""
        compiled = native.newest_spans
        if compiled is not None and limit > 0:
            newest = compiled([t.spans for t in self._traces.values()], limit)
            if newest is not None:
                return [_decoded(kept) for kept in newest]
        spans = [(_started_at(s), s) for t in self._traces.values() for s in t.spans]
        spans.sort(key=_first, reverse=True)
        return [_decoded(kept) for _, kept in spans[:limit]]


def _first(pair: tuple[str, bytes | Span]) -> str:
    return pair[0]


def _trace_matches(trace: IndexedTrace, where: TraceFilter) -> bool:
    if where.since_ms is not None and trace.started_ms < where.since_ms:
        return False
    if where.until_ms is not None and trace.started_ms >= where.until_ms:
        return False
    return not where.filters_spans or trace.matches(where)


def attribute_filters(query: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The ``attr.{key}`` parameters of a query string as (key, value) pairs."""
    return tuple(sorted((k[5:], v) for k, v in query.items() if k.startswith("attr.") and len(k) > 5))
