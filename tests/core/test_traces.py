"""The trace index keeps spans encoded (``IndexedTrace``); what it answers must be what the same spans kept as
objects answer (``StoredTrace``, the reference): summaries and names, bodies, filtered searches, recent spans,
whether the spans came one by one (``TraceIndex.add``) or as a compiled batch (``TraceIndex.add_batch``)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.api.stores.test_embedded_compiled import NOW, spans
from tests.core.test_native import REQUIRED
from tokentrace.core import native
from tokentrace.core.buckets import SEP
from tokentrace.core.codec import encode_wire
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS
from tokentrace.core.traces import StoredTrace, TraceFilter, TraceIndex

pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.decode_batch is None, reason="compiled module not built")]

DAY_MS = 86_400_000
_json = msgspec.json.encode

filters = st.builds(
    TraceFilter,
    attributes=st.sampled_from([(), (("workflow", "x"),), (("flag", "true"),), (("route", "1"),)]),
    model=st.sampled_from([None, "gpt-4o", "claude"]),
    caller=st.sampled_from([None, "", "bot"]),
    status=st.sampled_from([None, "ok", "error", "timeout"]),
    since_ms=st.sampled_from([None, NOW - 2 * MINUTE_MS]),
    until_ms=st.sampled_from([None, NOW - MINUTE_MS]),
)


def _compiled(batch: list[Span]) -> tuple[Any, bytes] | None:
    """The batch as ``POST /spans`` compiles it (live: a span without latency leaves it to ``add``)."""
    assert native.decode_batch is not None
    wire = encode_wire(batch)
    bounds = (-(2**63), 2**63 - 1, MINUTE_MS, -(2**63), False, MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE)
    compiled = native.decode_batch(wire, *bounds, SEP, live=True)
    return None if compiled is None else (compiled, wire)


def _matches(trace: StoredTrace, where: TraceFilter) -> bool:
    if where.since_ms is not None and trace.started_ms < where.since_ms:
        return False
    if where.until_ms is not None and trace.started_ms >= where.until_ms:
        return False
    return any(where.matches_span(span) for span in trace.spans)


@given(st.lists(st.lists(spans(), min_size=1, max_size=12), max_size=5), filters, st.integers(1, 20))
@settings(max_examples=300, deadline=None)
def test_the_index_answers_as_its_spans_kept_as_objects_would(
    batches: list[list[Span]], where: TraceFilter, limit: int
) -> None:
    by_span, by_batch = TraceIndex(10_000, DAY_MS), TraceIndex(10_000, DAY_MS)
    reference: dict[str, StoredTrace] = {}
    for batch in batches:
        for span in batch:
            reference.setdefault(span.trace_id, StoredTrace(span.trace_id)).add(span)
            by_span.add(span)
        compiled = _compiled(batch)
        if compiled is None:
            for span in batch:
                by_batch.add(span)
        else:
            by_batch.add_batch(batch, *compiled)
    expected = sorted((t for t in reference.values() if _matches(t, where)), key=lambda t: t.started_ms, reverse=True)
    newest = sorted((s for t in reference.values() for s in t.spans), key=lambda s: s.started_at or "", reverse=True)
    for index in (by_span, by_batch):
        assert list(index._traces) == list(reference)
        assert [t.trace_id for t in index._order] == list(reference)
        for trace_id, trace in reference.items():
            kept = index.get(trace_id)
            assert kept is not None
            assert kept.summary() == trace.summary()
            assert _json(kept.body()) == _json(trace.body())
        total, page = index.search(where, limit, 0)
        assert (total, [t.summary() for t in page]) == (len(expected), [t.summary() for t in expected[:limit]])
        assert _json(index.recent_spans(limit)) == _json(newest[:limit])


def test_a_span_without_latency_reads_back_without_one() -> None:
    """Stamped, a span given neither latency nor end has both timestamps; decoded, it would derive latency 0."""
    index = TraceIndex(100, DAY_MS)
    span = Span(trace_id="t", span_id="s", model="m", prompt_tokens=1)
    span.stamp(NOW)
    index.add(span)
    trace = index.get("t")
    assert trace is not None
    assert [s.latency_ms for s in trace.decoded()] == [None]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(span), type=Span).latency_ms == 0


def test_the_compiled_reads_take_spans_kept_encoded() -> None:
    """``match_spans`` and ``newest_spans`` answer for encoded spans (the hypothesis test above holds their
    answers to the reference); a span kept as an object, ``match_spans`` leaves to Python, ``newest_spans`` reads."""
    assert native.match_spans is not None and native.newest_spans is not None
    index = TraceIndex(100, DAY_MS)
    for n in range(6):
        span = Span(trace_id=f"t{n % 2}", span_id=f"s{n}", model="m", prompt_tokens=1, latency_ms=5.0)
        span.stamp(NOW - n * 1000)
        index.add(span)
    kept = [t.spans for t in index._traces.values()]
    newest = native.newest_spans(kept, 3)
    assert newest is not None
    assert [s.span_id for s in index.recent_spans(3)] == ["s0", "s1", "s2"]
    assert native.match_spans(kept[0], "m", None, "ok", [("x", "1")]) is False
    assert native.match_spans(kept[0], "m", None, "ok", []) is True
    bare = Span(trace_id="t0", span_id="bare", model="m", prompt_tokens=1)
    bare.stamp(NOW + 1000)
    index.add(bare)
    kept = [t.spans for t in index._traces.values()]
    assert native.match_spans(kept[0], "x", None, None, []) is None  # a span kept as an object: Python decides
    newest = native.newest_spans(kept, 3)
    assert newest is not None and newest[0] is bare
    assert [s.span_id for s in index.recent_spans(3)] == ["bare", "s0", "s1"]


@given(
    st.lists(st.lists(spans(), min_size=1, max_size=6), min_size=1, max_size=6),
    st.lists(spans(), min_size=1, max_size=6),
    st.integers(1, 40),
)
@settings(max_examples=200, deadline=None)
def test_the_compiled_search_for_traces_to_evict_answers_as_python(
    held: list[list[Span]], added: list[Span], excess: int
) -> None:
    """``native.oldest_traces`` (``TraceIndex._oldest``): how many of the oldest traces hold ``excess`` spans,
    and none when the batch adds to one of them or the index holds fewer."""
    index = TraceIndex(10_000, DAY_MS)
    for batch in held:
        for span in batch:
            index.add(span)
    compiled = _compiled(added)
    if compiled is None:
        return
    answer = index._oldest(excess, compiled[0])
    assert native.oldest_traces is not None
    with mock.patch.object(native, "oldest_traces", None):
        assert index._oldest(excess, compiled[0]) == answer
    ids = list(index._traces)
    if answer is not None:
        evicted, freed = answer
        assert sum(len(index._traces[i].spans) for i in ids[:evicted]) == freed >= excess
        assert not {span.trace_id for span in added} & set(ids[:evicted])


def _held(index: TraceIndex) -> list[tuple[str, bytes, bytes]]:
    return [(t.trace_id, _json(t.summary()), _json(t.body())) for t in index._order]


@given(st.lists(st.lists(spans(), min_size=1, max_size=12), max_size=5), st.integers(1, 40))
@settings(max_examples=300, deadline=None)
def test_a_batch_leaves_out_the_traces_past_the_retention_compiled_or_not(
    batches: list[list[Span]], max_spans: int
) -> None:
    """A trace the index does not hold whose spans in a batch all ended before the trace retention at the
    batch's acceptance (a back-fill's) is left out, compiled or span by span, evictions included; a trace it
    holds takes them all."""
    retention = 10 * HOUR_MS  # the spans start 0, 3 or 50 hours before NOW
    by_spans, by_batch = TraceIndex(max_spans, retention), TraceIndex(max_spans, retention)
    unbounded = TraceIndex(10_000, retention)
    reference: dict[str, StoredTrace] = {}
    for batch in batches:
        latest: dict[str, int] = {}
        for span in batch:
            trace = StoredTrace(span.trace_id)
            trace.add(span)
            latest[span.trace_id] = max(latest.get(span.trace_id, 0), trace.ended_ms, trace.started_ms)
        for span in batch:
            if span.trace_id in reference or latest[span.trace_id] >= NOW - retention:
                reference.setdefault(span.trace_id, StoredTrace(span.trace_id)).add(span)
        by_spans.add_spans(batch, NOW)
        unbounded.add_spans(batch, NOW)
        compiled = _compiled(batch)
        if compiled is None:
            by_batch.add_spans(batch, NOW)
        else:
            by_batch.add_batch(batch, *compiled, NOW)
        assert _held(by_batch) == _held(by_spans)
        assert (by_batch.span_count, by_batch.evicted_traces) == (by_spans.span_count, by_spans.evicted_traces)
    assert [(t.trace_id, t.summary()) for t in unbounded._order] == [(t, r.summary()) for t, r in reference.items()]


def test_a_back_filled_trace_past_the_retention_is_not_indexed_and_pushes_no_recent_one_out() -> None:
    index = TraceIndex(2, DAY_MS)
    recent = Span(trace_id="recent", span_id="1", model="m", prompt_tokens=1, latency_ms=5.0)
    recent.stamp(NOW)
    index.add_spans([recent], NOW)
    old = [Span(trace_id=f"old{n}", span_id="1", model="m", prompt_tokens=1, latency_ms=5.0) for n in range(3)]
    for span in old:
        span.stamp(NOW - 2 * DAY_MS)
    compiled = _compiled(old)
    assert compiled is not None
    index.add_batch(old, *compiled, NOW)
    assert [t.trace_id for t in index._order] == ["recent"]
    index.add_spans(old, NOW)
    assert [t.trace_id for t in index._order] == ["recent"]
    index.add_spans(old)  # no acceptance time: every span (what a snapshot restores)
    assert [t.trace_id for t in index._order] == ["old1", "old2"]


def test_a_batch_all_left_out_evicts_nothing_from_an_index_over_its_bound() -> None:
    """The index is over ``max_spans`` while its newest trace alone holds more; a back-filled batch whose traces
    are all left out adds nothing, so it evicts nothing either (found by the test above: the compiled path
    evicted that trace for the spans it did not add)."""
    by_spans, by_batch = TraceIndex(1, DAY_MS), TraceIndex(1, DAY_MS)
    big = [Span(trace_id="big", span_id=str(n), model="m", prompt_tokens=1, latency_ms=5.0) for n in range(2)]
    old = [Span(trace_id="old", span_id="1", model="m", prompt_tokens=1, latency_ms=5.0)]
    for span in big:
        span.stamp(NOW)
    old[0].stamp(NOW - 2 * DAY_MS)
    for index in (by_spans, by_batch):
        index.add_spans(big, NOW)
    by_spans.add_spans(old, NOW)
    compiled = _compiled(old)
    assert compiled is not None
    by_batch.add_batch(old, *compiled, NOW)
    for index in (by_spans, by_batch):
        assert ([t.trace_id for t in index._order], index.span_count, index.evicted_traces) == (["big"], 2, 0)
