"""The per-bucket series cap (``Caps.max_series``): what bounds the series of spans that reach the workers
straight from Kafka. Checked against brute-force recounts, on the compiled kernel and the Python code alike."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_native import python_path
from tokentrace.core import buckets as buckets_module
from tokentrace.core import frozen
from tokentrace.core.buckets import OVERFLOW, OVERFLOW_SERIES, SERIES, BucketState, Caps, series_key
from tokentrace.core.span import Span
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, Timeline, TimelineSettings

_encode = msgspec.msgpack.Encoder().encode

#: Spans of many distinct models (the Kafka flood), some with the overflow series itself, some attributes.
flood = st.lists(
    st.builds(
        lambda model, provider, tokens, cost, tier, whole: Span(
            model=OVERFLOW if whole else model,
            provider=OVERFLOW if whole else provider,
            caller=OVERFLOW if whole else "",
            prompt_tokens=tokens,
            comp_tokens=tokens // 2,
            cost_usd=cost,
            attributes={"tier": tier} if tier else {},
        ),
        st.sampled_from([f"model-{i}" for i in range(12)]),
        st.sampled_from(["openai", "anthropic"]),
        st.integers(0, 10**6),
        st.sampled_from([0.0, 0.25, 1.5, 1e-9]),
        st.sampled_from(["", "free", "paid"]),
        st.integers(0, 14).map(lambda n: n == 0),
    ),
    max_size=60,
)
tiny = st.integers(0, 4)
cuts = st.lists(st.integers(0, 60), max_size=4)


def _split(items: Sequence[Span], at: list[int]) -> list[list[Span]]:
    edges = sorted({min(c, len(items)) for c in at} | {0, len(items)})
    return [list(items[a:b]) for a, b in pairwise(edges)]


def _kept(keys: Sequence[str], cap: int) -> set[str]:
    """The series a bucket keeps apart: the first ``cap`` distinct ones (the overflow series aside), in order."""
    kept: list[str] = []
    for key in keys:
        if key != OVERFLOW_SERIES and key not in kept and len(kept) < cap:
            kept.append(key)
    return set(kept)


def _check_against_recount(state: BucketState, spans: Sequence[Span], cap: int) -> None:
    kept = _kept([series_key(span) for span in spans], cap)
    expected: dict[str, tuple[int, int, int]] = {}
    for span in spans:
        key = series_key(span)
        key = key if key in kept or key == OVERFLOW_SERIES else OVERFLOW_SERIES
        count, prompt, cost = expected.get(key, (0, 0, 0))
        expected[key] = (count + 1, prompt + (span.prompt_tokens or 0), cost + round((span.cost_usd or 0) * 10**9))
    got = {key: (a.count, a.prompt_tokens, a.cost_nanos) for key, a in state.series.items()}
    assert got == expected
    folded = sum(1 for span in spans if series_key(span) not in kept and series_key(span) != OVERFLOW_SERIES)
    assert state.overflowed_series == folded
    assert len(state.series) - (OVERFLOW_SERIES in state.series) <= cap
    for values in state.attributes.values():  # attribute groups are crossed with the series the bucket kept
        for by_series in values.values():
            assert set(by_series) <= set(state.series)


@given(flood, tiny, cuts)
@settings(max_examples=200, deadline=None)
def test_the_kernel_and_the_python_code_cap_series_alike_and_exactly(
    spans: list[Span], cap: int, at: list[int]
) -> None:
    """Totals equal a recount, at most ``cap`` series plus the overflow series, each fold counted; the compiled
    kernel, the Python ``add_many`` and ``add`` one span at a time give the same bytes, however the spans are cut."""
    assert buckets_module._KERNEL is not None
    caps = Caps(max_series=cap)
    native, python, single = BucketState(), BucketState(), BucketState()
    for part in _split(spans, at):
        native.add_many(part, caps)
        with python_path():
            python.add_many(part, caps)
    for span in spans:
        single.add(span, caps)
    assert _encode(native) == _encode(python) == _encode(single)
    _check_against_recount(native, spans, cap)


@given(st.lists(flood, min_size=1, max_size=5), tiny)
@settings(max_examples=150, deadline=None)
def test_merging_minutes_into_an_hour_keeps_the_cap_and_the_totals(minutes: list[list[Span]], cap: int) -> None:
    """An hour merged from capped minutes, in order, is capped too: the series it keeps are the first ``cap`` of
    the minutes' series in merge order, everything else counts in the overflow series (totals exact)."""
    caps = Caps(max_series=cap)
    states = []
    for spans in minutes:
        state = BucketState()
        state.add_many(spans, caps)
        states.append(state)
    hour = BucketState()
    for state in states:
        hour.merge(state, caps)
    kept = _kept([key for state in states for key in state.series], cap)
    assert set(hour.series) - {OVERFLOW_SERIES} == kept
    everything = [span for spans in minutes for span in spans]
    assert sum(a.count for a in hour.series.values()) == len(everything)
    assert sum(a.prompt_tokens for a in hour.series.values()) == sum(s.prompt_tokens or 0 for s in everything)
    assert sum(a.cost_nanos for a in hour.series.values()) == sum(round((s.cost_usd or 0) * 10**9) for s in everything)
    folded_on_merge = sum(
        a.count for state in states for key, a in state.series.items() if key not in kept and key != OVERFLOW_SERIES
    )
    assert hour.overflowed_series == sum(s.overflowed_series for s in states) + folded_on_merge
    for values in hour.attributes.values():
        for by_series in values.values():
            assert set(by_series) <= set(hour.series)
    # The same merges into a fresh hour decide the same (the decision is a function of the states, in order).
    again = BucketState()
    for state in states:
        again.merge(msgspec.msgpack.decode(_encode(state), type=BucketState), caps)
    assert _encode(again) == _encode(hour)


def test_an_uncapped_merge_keeps_every_series_and_the_counts() -> None:
    caps = Caps(max_series=1)
    a, b = BucketState(), BucketState()
    a.add_many([Span(model="x", prompt_tokens=1), Span(model="y", prompt_tokens=2)], caps)
    b.add_many([Span(model="z", prompt_tokens=4)], caps)
    a.merge(b)  # no caps: a plain union (what a read-time merge of partitions does)
    assert {k.split("\x1f")[0] for k in a.series} == {"x", OVERFLOW, "z"}
    assert a.overflowed_series == 1


@given(flood, tiny)
@settings(max_examples=100, deadline=None)
def test_adding_to_a_frozen_capped_bucket_is_adding_to_the_live_one(spans: list[Span], cap: int) -> None:
    caps = Caps(max_series=cap)
    live = BucketState()
    half = len(spans) // 2
    live.add_many(spans[:half], caps)
    raw = frozen.freeze(live)
    live.add_many(spans[half:], caps)
    assert bytes(frozen.add_many(raw, spans[half:], caps)) == _encode(live)
    assert frozen.overflowed_series(frozen.freeze(live)) == live.overflowed_series


def test_the_timeline_counts_the_folds_of_live_frozen_compacted_and_retired_buckets() -> None:
    """``Timeline.overflowed_series``: the lifetime count of capped spans, through freezing, folding into hours
    and retirement; the lifetime series stay bounded by the cap per bucket."""
    settings_ = TimelineSettings(
        bucket_ms=MINUTE_MS, fine_retention_ms=2 * HOUR_MS, retention_ms=4 * HOUR_MS, caps=Caps(max_series=2)
    )
    timeline = Timeline(settings_)
    start = 10 * 24 * HOUR_MS
    spans = [(Span(model=f"m{i}", prompt_tokens=i), start + (i % 90) * MINUTE_MS) for i in range(900)]
    for span, at in spans:
        timeline.add(span, at)
    per_minute = 900 // 90
    assert timeline.overflowed_series() == 90 * (per_minute - 2)
    lifetime = timeline.lifetime(SERIES)
    assert sum(a.count for a in lifetime.values()) == 900
    assert sum(a.prompt_tokens for a in lifetime.values()) == sum(range(900))
    before = timeline.overflowed_series()
    timeline.compact(start + 3 * HOUR_MS)  # the minutes fold into (capped) hours, the rest freezes
    after_fold = timeline.overflowed_series()
    assert after_fold > before  # the hours keep 2 series each: the minutes' other kept series fold now
    assert timeline.overflowed_series() == after_fold  # read again, memoised: the same
    timeline.compact(start + 10 * HOUR_MS)  # everything retires into one capped bucket
    assert timeline.overflowed_series() >= after_fold
    lifetime = timeline.lifetime(SERIES)
    assert len(lifetime) <= 3
    assert sum(a.count for a in lifetime.values()) == 900
    assert sum(a.prompt_tokens for a in lifetime.values()) == sum(range(900))
    assert timeline.overflowed_series() == 900 - sum(a.count for k, a in lifetime.items() if k != OVERFLOW_SERIES)
