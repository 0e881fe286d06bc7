"""Replacing whole buckets (a copy of state kept elsewhere, as the Redis view does) invalidates every memo."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_timeline import NOW, span_strategy
from tokentrace.core.buckets import BucketState, Caps
from tokentrace.core.timeline import DAY_MS, HOUR_MS, MINUTE_MS, Timeline, TimelineSettings, total


def _state(spans: list) -> BucketState:  # type: ignore[type-arg]
    state = BucketState()
    for span in spans:
        state.add(span, Caps())
    return state


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("fine", "hour")), st.integers(0, 40), st.lists(span_strategy, max_size=4))))
def test_replaced_buckets_read_back_through_every_memo(changes: list) -> None:  # type: ignore[type-arg]
    timeline = Timeline(TimelineSettings(fine_retention_ms=2 * DAY_MS))
    expected: dict[tuple[str, int], int] = {}
    day_start = NOW - NOW % DAY_MS - DAY_MS
    for kind, slot, spans in changes:
        state = _state(spans) if spans else None
        if kind == "fine":
            start = NOW - NOW % MINUTE_MS - slot * MINUTE_MS
            timeline.replace_bucket(start, state)
        else:
            start = day_start + (slot % 24) * HOUR_MS
            timeline.replace_hour(start, state)
        expected[(kind, start)] = len(spans)
        # Query after every change: long windows are memoised and must see the replacement.
        window = total(timeline.query(day_start, NOW + MINUTE_MS, None, {}))
        assert window.count == sum(expected.values())


def test_replace_retired_sets_lifetime() -> None:
    timeline = Timeline()
    before = timeline.generation
    timeline.replace_retired(_state([]))
    assert timeline.generation > before
    assert total(timeline.lifetime()).count == 0
