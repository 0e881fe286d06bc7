"""``Timeline.add_many(..., hours_before)``: a span older than the fine retention goes straight to its hour.

Once ``compact`` has run, every query must answer as if the span had made a minute bucket that ``compact``
folded: counts and sums exact, sketches bin for bin. (A sketch's min or max is the same number either way, but
where an int and a float tie, e.g. latencies 1 and 1.0, it may be the other span's: the spans meet in another
order. Numbers are compared as floats for that.)
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core.aggregate import Aggregate
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms
from tokentrace.core.timeline import DAY_MS, HOUR_MS, MINUTE_MS, Timeline

NOW = 1_780_000_000_000 + 17 * MINUTE_MS + 1234
GROUPS = [None, "model", "caller", "route"]


@st.composite
def spans(draw: st.DrawFn) -> Span:
    at = NOW - draw(st.sampled_from([0, 47 * HOUR_MS, 48 * HOUR_MS, 49 * HOUR_MS, 3 * DAY_MS, 20 * DAY_MS]))
    at -= draw(st.integers(0, 2 * HOUR_MS))
    return Span(
        model=draw(st.sampled_from(["gpt-4o", "claude"])),
        caller=draw(st.sampled_from(["", "bot"])),
        prompt_tokens=draw(st.integers(0, 5000)),
        comp_tokens=draw(st.integers(0, 500)),
        cost_usd=draw(st.one_of(st.none(), st.floats(0, 1))),
        latency_ms=draw(st.one_of(st.floats(0, 1e5), st.integers(0, 10**5))),
        status=draw(st.sampled_from(["ok", "error", "timeout"])),
        started_at=format_ms(at),
        attributes=draw(st.sampled_from([{}, {"route": "a"}, {"route": "b", "eval.score": 0.5}])),
    )


def _numbers(value: Any) -> Any:
    """``value`` (decoded msgpack) with every number a float (all are below 2**53 here: exact)."""
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _answers(timeline: Timeline) -> list[Any]:
    """Every grouping over the whole retention, each group's aggregate, groups sorted."""
    out = []
    projections = [timeline.query(NOW - 31 * DAY_MS, NOW + HOUR_MS, groupby) for groupby in GROUPS]
    lifetime: dict[str, Aggregate] = timeline.lifetime()
    for projection in [*projections, lifetime]:
        out.append(_numbers(msgspec.msgpack.decode(msgspec.msgpack.encode(sorted(projection.items())))))
    return out


@given(st.lists(st.lists(spans(), min_size=1, max_size=10), max_size=4))
@settings(max_examples=300, deadline=None)
def test_straight_to_the_hour_answers_as_a_folded_minute(batches: list[list[Span]]) -> None:
    folded, direct = Timeline(), Timeline()
    hours_before = direct.hours_before(NOW)
    for batch in batches:
        times = [span.stamp(NOW) for span in batch]
        folded.add_many(batch, times)
        direct.add_many(batch, times, hours_before)
    assert all(start >= hours_before for start in direct._fine), "no minute before the cut is made"
    folded.compact(NOW)
    direct.compact(NOW)
    assert _answers(direct) == _answers(folded)
    assert direct._fine.keys() == folded._fine.keys() and direct._coarse.keys() == folded._coarse.keys()


def _compiled(batch: list[Span], times: list[int]) -> Any:
    """The batch as the embedded store compiles it (``EmbeddedStore._compile``), its spans already stamped."""
    from tokentrace.core import native
    from tokentrace.core.buckets import SEP
    from tokentrace.core.codec import encode_wire
    from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS

    if native.decode_batch is None:
        return None
    low, high = -(2**63), 2**63 - 1
    bounds = (MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE)
    return native.decode_batch(encode_wire(batch), low, high, MINUTE_MS, low, False, *bounds, SEP, live=True)


@given(
    st.lists(st.tuples(st.lists(spans(), min_size=1, max_size=10), st.booleans()), min_size=1, max_size=5),
    st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_a_compiled_batch_into_frozen_buckets_counts_as_the_spans_do(
    batches: list[tuple[list[Span], bool]], read: bool
) -> None:
    """Settled buckets are frozen (tokentrace/core/frozen.py); a compiled batch's spans that reach one before the
    hot hours wait in the backlog and are counted on the bucket's bytes when it is read or flushed; a settled
    bucket it makes is made frozen. Batches the store could not compile (the bool) wait as spans in between. The
    answers are those of the spans added one batch at a time (``read``: each batch is applied before the next
    arrives, else they pile up)."""
    compiled, reference = Timeline(), Timeline()
    seed = [span for batch, _ in batches for span in batch][::2]
    for timeline in (compiled, reference):  # a history, frozen where settled
        timeline.add_many(seed, [span.stamp(NOW) for span in seed])
        timeline.compact(NOW)
        timeline.compact(NOW)
    hours_before = compiled.hours_before(NOW)
    settled_before, settled = compiled.settled_writes, 0
    for batch, as_spans in batches:
        times = [span.stamp(NOW) for span in batch]
        settled += sum(at < compiled._hot_from for at in times)  # before the hot hours: a back-fill's writes
        wire = None if as_spans else _compiled(batch, times)
        if wire is None:
            compiled.add_many(batch, times, hours_before)
        else:
            compiled.add_batch(wire, hours_before)
        reference.add_many(batch, times, hours_before)
        if read:
            compiled.flush_pending()
    assert compiled.settled_writes - settled_before == settled
    assert reference.settled_writes == compiled.settled_writes
    compiled.compact(NOW)
    reference.compact(NOW)
    assert _answers(compiled) == _answers(reference)


def test_what_waits_for_settled_buckets_is_bounded_in_spans_and_in_span_objects(monkeypatch: Any) -> None:
    """Past ``_PENDING_SPANS`` waiting spans (rows or objects), or ``_PENDING_OBJECTS`` as objects, the fullest
    buckets take theirs at once, down to half; the answers are the same as with nothing deferred."""
    from tokentrace.core import timeline as timeline_module

    monkeypatch.setattr(timeline_module, "_PENDING_SPANS", 40)
    monkeypatch.setattr(timeline_module, "_PENDING_OBJECTS", 10)
    deferred, reference = Timeline(), Timeline()
    hours_before = deferred.hours_before(NOW)

    def batch(seed: int, count: int) -> list[Span]:
        return [
            Span(model="m", prompt_tokens=seed + n, latency_ms=n + 1, started_at=format_ms(NOW - (3 + n % 5) * DAY_MS))
            for n in range(count)
        ]

    for timeline in (deferred, reference):  # settled hours, frozen
        seed = batch(0, 20)
        timeline.add_many(seed, [span.stamp(NOW) for span in seed], hours_before)
        timeline.compact(NOW)
        timeline.compact(NOW)
    for round_ in range(12):
        spans = batch(round_ * 100, 7)
        times = [span.stamp(NOW) for span in spans]
        wire = _compiled(spans, times) if round_ % 2 else None
        if wire is None:
            deferred.add_many(spans, times, hours_before)
        else:
            deferred.add_batch(wire, hours_before)
        reference.add_many(spans, times, hours_before)
        reference.flush_pending()
        assert deferred.pending_spans <= 40 and deferred._pending_objects <= 10
    assert deferred.pending_spans > 0
    deferred.compact(NOW)
    reference.compact(NOW)
    assert _answers(deferred) == _answers(reference)


def test_settled_writes_count_the_spans_that_reach_buckets_before_the_hot_hours() -> None:
    """What the embedded store reads to tell a back-fill under way (its memos wait for the end of one)."""
    timeline = Timeline()
    timeline.compact(NOW)
    for at in (NOW - 3 * DAY_MS, NOW - 2 * HOUR_MS, NOW - 30 * MINUTE_MS, NOW):
        span = Span(model="m", prompt_tokens=1, latency_ms=1, started_at=format_ms(at))
        timeline.add(span, span.stamp(NOW))
    assert timeline.settled_writes == 2  # three days and two hours ago; not the previous hour, not now
