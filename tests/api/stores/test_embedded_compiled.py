"""The embedded store's compiled apply (``Timeline.add_batch``, ``TraceIndex.add_batch`` from the worker's
``decode_batch`` of the log record) against its Python path (``Timeline.add_many``, ``TraceIndex.add`` per span,
every native hook off).

Batch after batch, both stores must hold the same aggregates (encoded state, dict order and overflow counts
included) and the same trace index: traces in the same order with the same spans and totals, the same evictions.
Small ``max_spans`` make evictions happen inside batches, and traces span batches.
"""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_batch_add import caps
from tests.core.test_native import REQUIRED, python_path
from tokentrace.api.stores.embedded import EmbeddedSettings, EmbeddedStore
from tokentrace.core import native
from tokentrace.core.buckets import Caps
from tokentrace.core.codec import encode_wire
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, TimelineSettings, TimelineSnapshot

pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.decode_batch is None, reason="compiled module not built")]

NOW = 1_780_000_000_000


@st.composite
def spans(draw: st.DrawFn) -> Span:
    """A prepared span (stamped, maybe priced) of one of a few traces, at one of a few minutes and hours."""
    started = NOW - draw(st.sampled_from([0, 1, 2])) * MINUTE_MS - draw(st.sampled_from([0, 3, 50])) * HOUR_MS
    started -= draw(st.integers(0, 59_999))
    span = Span(
        trace_id=draw(st.sampled_from(["a", "b", "c", "d", "e"])),
        span_id=draw(st.sampled_from(["1", "2", "3"])),
        parent_span_id=draw(st.sampled_from([None, "1"])),
        name=draw(st.sampled_from(["plan", "draft"])),
        model=draw(st.sampled_from(["gpt-4o", "claude"])),
        provider=draw(st.sampled_from(["", "openai"])),
        caller=draw(st.sampled_from(["", "bot"])),
        prompt_tokens=draw(st.one_of(st.none(), st.integers(0, 5000))),
        comp_tokens=draw(st.integers(0, 500)),
        cost_usd=draw(st.one_of(st.none(), st.floats(0, 1), st.integers(0, 2))),
        latency_ms=draw(
            st.one_of(
                st.floats(0, 1e5),
                st.integers(0, 10**5),
                st.just(None) if draw(st.integers(0, 40)) == 0 else st.nothing(),
            )
        ),
        status=draw(st.sampled_from(["ok", "ok", "error", "timeout"])),
        started_at=format_ms(started),
        ended_at=draw(st.one_of(st.none(), st.just(format_ms(started + 1500)))),
        attributes=draw(
            st.dictionaries(
                st.sampled_from(["workflow", "route", "flag"]),
                st.one_of(st.sampled_from(["x", "y", "z"]), st.integers(0, 3), st.floats(0, 1), st.booleans()),
                max_size=3,
            )
        )
        | draw(st.sampled_from([{}, {"eval.score": 0.25}, {"eval.score": 1}])),
    )
    span.stamp(NOW)
    return span


def _store(max_spans: int, cap: Caps) -> EmbeddedStore:
    """A memory-only store whose trace index keeps the spans at ``NOW`` (a fixed time, months before the tests'
    acceptance time, beyond the default trace retention)."""
    settings = EmbeddedSettings(
        timeline=TimelineSettings(caps=cap), max_spans=max_spans, trace_retention_ms=10 * 365 * 86_400_000
    )
    return EmbeddedStore(None, settings)


def _traces(store: EmbeddedStore) -> list[Any]:
    index = store.traces
    assert [t.trace_id for t in index._order] == list(index._traces), "the eviction queue is the index's order"
    return [
        (
            t.trace_id,
            t.spans,
            t.started_ms,
            t.ended_ms,
            t.cost_nanos,
            t.priced,
            t.total_tokens,
            t.status,
            t.name,
            t.rooted,
        )
        for t in index._traces.values()
    ] + [index.span_count, index.evicted_traces]


@given(st.lists(st.lists(spans(), min_size=1, max_size=12), max_size=5), st.integers(1, 14), caps)
@settings(max_examples=400, deadline=None)
def test_the_compiled_apply_keeps_what_the_python_apply_keeps(
    batches: list[list[Span]], max_spans: int, cap: Caps
) -> None:
    compiled, reference = _store(max_spans, cap), _store(max_spans, cap)
    for batch in batches:
        wire = encode_wire(batch)
        compiled_batch = compiled._compile(wire)
        # Taken unless a span has no latency (in memory it has none; a decoded copy would derive one).
        assert (compiled_batch is None) == any(span.latency_ms is None for span in batch)
        compiled._apply(list(batch), None, NOW, None if compiled_batch is None else (compiled_batch, wire))
        with python_path():
            reference._apply(list(batch), None, NOW)
        assert _traces(compiled) == _traces(reference)
    snapshot = msgspec.msgpack.encode
    assert snapshot(compiled.timeline.snapshot()) == snapshot(reference.timeline.snapshot())
    assert compiled.timeline.generation == reference.timeline.generation
    assert compiled.timeline._versions == reference.timeline._versions


_snapshot = msgspec.msgpack.Decoder(TimelineSnapshot).decode


def _decoded(store: EmbeddedStore) -> bytes:
    """The store's timeline snapshot decoded and encoded again: frozen buckets and live ones alike, a sketch's
    int min or max a float (as after any restart)."""
    return msgspec.msgpack.encode(_snapshot(msgspec.msgpack.encode(store.timeline.snapshot())))


@given(st.lists(st.lists(spans(), min_size=1, max_size=12), max_size=5), st.integers(1, 14), caps)
@settings(max_examples=300, deadline=None)
def test_a_back_fill_into_settled_hours_keeps_what_the_python_apply_keeps(
    batches: list[list[Span]], max_spans: int, cap: Caps
) -> None:
    """With the hours before the last two settled (as after a restart), the spans 3 and 50 hours old wait in
    the backlog (compiled) or as spans (Python) for their frozen buckets; once applied, the same state."""
    compiled, reference = _store(max_spans, cap), _store(max_spans, cap)
    for store in (compiled, reference):
        store.timeline.compact(NOW)
    for batch in batches:
        wire = encode_wire(batch)
        compiled_batch = compiled._compile(wire)
        compiled._apply(list(batch), None, NOW, None if compiled_batch is None else (compiled_batch, wire))
        with python_path():
            reference._apply(list(batch), None, NOW)
        assert _traces(compiled) == _traces(reference)
    for store in (compiled, reference):
        store.timeline.flush_pending()
    assert _decoded(compiled) == _decoded(reference)
    assert compiled.timeline.generation == reference.timeline.generation
    assert compiled.timeline._versions == reference.timeline._versions


def test_ingest_takes_the_compiled_path_for_a_usual_batch() -> None:
    store = _store(100, Caps())
    batch = [
        Span(trace_id="t", span_id=str(n), model="m", prompt_tokens=n, latency_ms=5, started_at=format_ms(NOW))
        for n in range(3)
    ]
    for span in batch:
        span.stamp(NOW)
    with mock.patch.object(store.traces, "add", side_effect=AssertionError("added span by span")):
        asyncio.run(store.ingest(batch))
    trace = store.traces.get("t")
    assert trace is not None and len(trace.spans) == 3 and trace.total_tokens == 3
    assert store.span_total == 3


def test_a_full_index_takes_a_batch_of_new_traces_in_one_compiled_step_and_evicts_the_oldest() -> None:
    store = _store(4, Caps())

    def batch(*traces: str) -> list[Span]:
        spans = [
            Span(trace_id=t, span_id=t, model="m", prompt_tokens=1, latency_ms=5, started_at=format_ms(NOW))
            for t in traces
        ]
        for span in spans:
            span.stamp(NOW)
        return spans

    for spans in (batch("a", "b"), batch("c", "d"), batch("e", "f", "g")):
        with mock.patch.object(store.traces, "add", side_effect=AssertionError("added span by span")):
            asyncio.run(store.ingest(spans))
    assert [t.trace_id for t in store.traces._traces.values()] == ["d", "e", "f", "g"]
    assert (store.traces.span_count, store.traces.evicted_traces) == (4, 3)
    # A batch adding to a trace that must go for room is counted span by span, as the reference does it: "d"
    # takes its span, then goes whole as the oldest.
    with mock.patch.object(store.traces, "add", wraps=store.traces.add) as add:
        asyncio.run(store.ingest(batch("d", "h", "i", "j")))
    assert add.call_count == 4
    assert [t.trace_id for t in store.traces._traces.values()] == ["g", "h", "i", "j"]


def test_a_batch_decode_batch_declines_is_counted_by_the_python_path() -> None:
    store = _store(100, Caps())
    model = Span(trace_id="t", span_id="s", model="modèle", prompt_tokens=1, latency_ms=5, started_at=format_ms(NOW))
    timed = Span(trace_id="u", span_id="s", model="m", prompt_tokens=1, started_at=format_ms(NOW))  # no latency
    for span in (model, timed):
        span.stamp(NOW)
        assert store._compile(encode_wire([span])) is None
        asyncio.run(store.ingest([span]))
    assert store.span_total == 2 and store.traces.get("t") is not None
    (aggregate,) = store.timeline.query(NOW - HOUR_MS, NOW + HOUR_MS, "model", {"model": "m"}).values()
    assert aggregate.count == 1 and aggregate.latency_count == 0
