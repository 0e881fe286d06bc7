"""The batch paths (``add_many``) against the one-span paths and against the original one-span code.

Equality is checked on the encoded bytes (msgpack keeps dict order, int vs float and every counter), so a
batch must produce exactly the state a loop of ``add`` produces, whatever the batch and however it is split.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import pairwise
from typing import Any, cast
from unittest import mock

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core import aggregate as aggregate_module
from tokentrace.core.aggregate import LATENCY_BUCKETS_MS, NANO, PROMPT_TOKEN_BUCKETS, Aggregate
from tokentrace.core.buckets import OVERFLOW, OVERFLOW_SERIES, BucketState, Caps, _attribute_text, series_key
from tokentrace.core.sketch import Sketch
from tokentrace.core.span import EVAL_SCORE, Span
from tokentrace.core.timeline import Timeline, TimelineSettings

_encode = msgspec.msgpack.Encoder().encode


# The one-span code as it was before the batch paths existed: the oracle.
def reference_aggregate_add(self: Aggregate, span: Span) -> None:
    self.count += 1
    status = span.status
    if status == "ok":
        self.ok += 1
    elif status == "error":
        self.errors += 1
    else:
        self.timeouts += 1
    if span.cost_usd is None:
        self.unpriced += 1
    else:
        self.cost_nanos += int(span.cost_usd * NANO + 0.5)
    if span.prompt_tokens is not None:
        prompt = cast(int, span.prompt_tokens)
        self.prompt_tokens += prompt
        self.prompt_buckets[bisect_left(PROMPT_TOKEN_BUCKETS, prompt)] += 1
    self.comp_tokens += cast(int, span.comp_tokens or 0)
    self.total_tokens += cast(int, span.total_tokens or 0)
    latency = span.latency_ms
    if latency is not None:
        self.latency_count += 1
        self.latency_sum_us += round(latency * 1000)
        self.latency.add(latency)
        self.latency_buckets[bisect_left(LATENCY_BUCKETS_MS, latency)] += 1
    score = span.score
    if score is not None:
        self.score_count += 1
        self.score_sum_nanos += int(score * NANO + (0.5 if score >= 0 else -0.5))
        self.score.add(score)


def reference_bucket_add(self: BucketState, span: Span, caps: Caps) -> None:
    key = series_key(span)
    kept = [k for k in self.series if k != OVERFLOW_SERIES]
    if key not in self.series and key != OVERFLOW_SERIES and len(kept) >= caps.max_series:
        self.overflowed_series += 1
        key = OVERFLOW_SERIES
    aggregate = self.series.get(key)
    if aggregate is None:
        aggregate = self.series[key] = Aggregate()
    reference_aggregate_add(aggregate, span)
    for name, raw in span.attributes.items():
        if name == EVAL_SCORE:
            continue
        value = _attribute_text(raw)
        if value is None:
            continue
        values = self.attributes.get(name)
        if values is None:
            if len(self.attributes) >= caps.max_attribute_keys:
                self.overflowed += 1
                continue
            values = self.attributes[name] = {}
        by_series = values.get(value)
        if by_series is None:
            if len(values) >= caps.max_attribute_values:
                self.overflowed += 1
                value = OVERFLOW
                by_series = values.get(value)
            if by_series is None:
                by_series = values[value] = {}
        group = by_series.get(key)
        if group is None:
            group = by_series[key] = Aggregate()
        reference_aggregate_add(group, span)


# Spans over the whole valid range: int and float amounts, missing fields, negative and zero scores,
# attribute values of every type (floats are not grouped), few names and values so caps overflow.
tokens = st.one_of(st.none(), st.integers(0, 10**12), st.integers(0, 10**6).map(float))
amounts = st.one_of(
    st.none(),
    st.integers(0, 1000),
    st.floats(0, 1e6, allow_nan=False),
    st.sampled_from([0.0, 0.5, 1e-9, 2.5e-10]),
)
latencies = st.one_of(st.none(), st.integers(0, 10**10), st.floats(0, 1e10, allow_nan=False), st.just(0.0))
scores = st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0, 0.0, -0.0]))
attribute_values = st.one_of(
    st.sampled_from(["a", "b", "c", "__overflow__", "1"]), st.integers(0, 3), st.booleans(), st.floats(0, 1)
)
attributes = st.dictionaries(
    st.sampled_from(["workflow", "tier", "team", "region", "flag"]), attribute_values, max_size=4
).flatmap(lambda a: st.one_of(st.just(a), scores.map(lambda s: {**a, EVAL_SCORE: s}), st.just({EVAL_SCORE: 0.5, **a})))


@st.composite
def spans(draw: st.DrawFn) -> Span:
    prompt, comp, total = draw(tokens), draw(tokens), draw(tokens)
    if prompt is None and comp is None and total is None:
        prompt = draw(st.integers(0, 5000))
    folded = draw(st.integers(0, 19)) == 0  # now and then a span of the overflow series itself
    return Span(
        model=OVERFLOW if folded else draw(st.sampled_from(["gpt-4o", "claude", "m", OVERFLOW])),
        provider=OVERFLOW if folded else draw(st.sampled_from(["", "openai"])),
        caller=OVERFLOW if folded else draw(st.sampled_from(["", "chat", "search"])),
        prompt_tokens=prompt,
        comp_tokens=comp,
        total_tokens=total,
        cost_usd=draw(amounts),
        latency_ms=draw(latencies),
        status=draw(st.sampled_from(["ok", "ok", "error", "timeout"])),
        attributes=draw(attributes),
    )


batches = st.lists(spans(), max_size=40)
caps = st.builds(Caps, st.integers(0, 4), st.integers(0, 4), st.one_of(st.integers(0, 4), st.just(10_000)))
#: The group size from which ``Aggregate.add_many`` works field by field: 1 and 2 force the bulk code on
#: every group, the default leaves small groups to ``add``.
bulk_from = st.sampled_from([1, 2, aggregate_module.BULK_FROM])


def bulk_from_(size: int) -> Any:
    return mock.patch.object(aggregate_module, "BULK_FROM", size)


def split(items: list[Any], cuts: list[int]) -> list[list[Any]]:
    """``items`` cut at the given positions (taken modulo the length, sorted)."""
    points = sorted({c % (len(items) + 1) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in pairwise(points)]


@given(batches, st.lists(st.integers(0, 100), max_size=5), bulk_from)
@settings(max_examples=300)
def test_aggregate_add_many_equals_adding_one_by_one(batch: list[Span], cuts: list[int], size: int) -> None:
    reference, single, whole, parts = Aggregate(), Aggregate(), Aggregate(), Aggregate()
    for span in batch:
        reference_aggregate_add(reference, span)
        single.add(span)
    with bulk_from_(size):
        whole.add_many(batch)
        for part in split(batch, cuts):
            parts.add_many(part)
    assert _encode(single) == _encode(reference)
    assert _encode(whole) == _encode(reference)
    assert _encode(parts) == _encode(reference)
    assert whole == reference


@given(batches, batches, bulk_from)
@settings(max_examples=100)
def test_aggregate_add_many_onto_existing_state(first: list[Span], second: list[Span], size: int) -> None:
    reference, batched = Aggregate(), Aggregate()
    for span in first + second:
        reference_aggregate_add(reference, span)
    for span in first:
        batched.add(span)
    with bulk_from_(size):
        batched.add_many(second)
    assert _encode(batched) == _encode(reference)


@given(batches, caps, st.lists(st.integers(0, 100), max_size=5), bulk_from)
@settings(max_examples=300)
def test_bucket_add_many_equals_adding_one_by_one(batch: list[Span], cap: Caps, cuts: list[int], size: int) -> None:
    reference, single, whole, parts = BucketState(), BucketState(), BucketState(), BucketState()
    for span in batch:
        reference_bucket_add(reference, span, cap)
        single.add(span, cap)
    with bulk_from_(size):
        whole.add_many(batch, cap)
        for part in split(batch, cuts):
            parts.add_many(part, cap)
    assert _encode(single) == _encode(reference)
    assert _encode(whole) == _encode(reference)
    assert _encode(parts) == _encode(reference)
    assert whole.overflowed == reference.overflowed


sketch_values = st.one_of(
    st.integers(-(10**6), 10**10), st.floats(-1e10, 1e10, allow_nan=False), st.sampled_from([0, 0.0, -0.0, 1, 1.0])
)


@given(st.lists(sketch_values, max_size=60), st.lists(sketch_values, max_size=10))
@settings(max_examples=300)
def test_sketch_add_many_equals_adding_one_by_one(values: list[float], before: list[float]) -> None:
    single, batched = Sketch(), Sketch()
    for value in before:
        single.add(value)
        batched.add(value)
    for value in values:
        single.add(value)
    batched.add_many(values)
    assert _encode(batched) == _encode(single)
    assert type(batched.min) is type(single.min) and type(batched.max) is type(single.max)


def test_caps_overflow_the_same_in_a_batch() -> None:
    cap = Caps(max_attribute_keys=1, max_attribute_values=2)
    batch = [Span(model="m", prompt_tokens=1, attributes={"a": v, "b": "x"}) for v in ("1", "2", "3", "4", "2")]
    reference, batched = BucketState(), BucketState()
    for span in batch:
        reference_bucket_add(reference, span, cap)
    batched.add_many(batch, cap)
    assert _encode(batched) == _encode(reference)
    assert batched.overflowed == 5 + 2  # every "b", then "3" and "4"
    assert list(batched.attributes["a"]) == ["1", "2", OVERFLOW]


# ---------------------------------------------------------------- Timeline.add_many
timed = st.lists(st.tuples(spans(), st.integers(0, 3 * 86_400_000)), max_size=60)


def _timeline_state(timeline: Timeline) -> tuple[bytes, dict[tuple[int, int], int], int]:
    return _encode(timeline.snapshot()), timeline._versions, timeline.generation


@given(timed, timed, st.lists(st.integers(0, 100), max_size=4), bulk_from)
@settings(max_examples=100, deadline=None)
def test_timeline_add_many_equals_adding_one_by_one(
    before: list[tuple[Span, int]], batch: list[tuple[Span, int]], cuts: list[int], size: int
) -> None:
    """Same buckets, same versions (so the same memo invalidation) and the same generation, including
    spans that land in compacted hours."""
    settings_ = TimelineSettings(fine_retention_ms=86_400_000, retention_ms=30 * 86_400_000)
    now = 1_780_000_000_000
    single, batched = Timeline(settings_), Timeline(settings_)
    for timeline in (single, batched):
        for span, age in before:
            timeline.add(span, now - age)
        timeline.compact(now)
    for span, age in batch:
        single.add(span, now - age)
    with bulk_from_(size):
        for part in split(batch, cuts):
            batched.add_many([s for s, _ in part], [now - age for _, age in part])
    assert _timeline_state(batched) == _timeline_state(single)
