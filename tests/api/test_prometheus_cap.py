"""The exposition's own series cap (``cap_series``): the union of per-bucket capped series stays bounded.

Spans sent straight to Kafka skip the API's ``LabelCaps``; each bucket caps its series, but a month of buckets,
each with its own new names, adds up. The exposition shows the first ``max_series`` series of the lifetime
totals and sums the rest into the overflow series: totals exact, label sets bounded.
"""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tokentrace.api.prometheus import ExpositionSnapshot, cap_series, render
from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import OVERFLOW_SERIES, SEP, Projection
from tokentrace.core.timeline import total

_encode = msgspec.msgpack.Encoder().encode


def aggregate(count: int, cost_nanos: int) -> Aggregate:
    return Aggregate(count=count, ok=count, cost_nanos=cost_nanos, prompt_tokens=3 * count, total_tokens=3 * count)


def projection(sizes: list[tuple[int, int]], with_overflow: bool) -> Projection:
    out: Projection = {SEP.join((f"m{i}", "p", f"c{i % 3}")): aggregate(n, c) for i, (n, c) in enumerate(sizes)}
    if with_overflow:
        out[OVERFLOW_SERIES] = aggregate(5, 7)
    return out


@given(
    st.lists(st.tuples(st.integers(1, 1000), st.integers(0, 10**12)), max_size=40),
    st.integers(0, 50),
    st.booleans(),
)
@settings(max_examples=200)
def test_cap_series_keeps_the_first_series_and_sums_the_rest(
    sizes: list[tuple[int, int]], cap: int, with_overflow: bool
) -> None:
    series = projection(sizes, with_overflow)
    before = _encode(series)
    capped = cap_series(series, cap)
    assert _encode(series) == before, "the input is left as it was"
    kept = [key for key in capped if key != OVERFLOW_SERIES]
    assert len(kept) <= cap
    assert kept == [key for key in series if key != OVERFLOW_SERIES][:cap], "the first ones, in order"
    assert all(_encode(capped[key]) == _encode(series[key]) for key in kept)
    assert _encode(total(capped)) == _encode(total(series)), "nothing lost or counted twice"
    if len(series) - with_overflow <= cap:
        assert capped is series


def test_the_exposition_shows_at_most_max_series_label_sets_with_exact_totals() -> None:
    series = projection([(i + 1, 1_000_000 * (i + 1)) for i in range(10)], with_overflow=False)
    text = render(ExpositionSnapshot(series=series, quality_by_model={}, max_series=3)).decode()
    cost = next(f for f in text_string_to_metric_families(text) if f.name == "tokentrace_cost")
    models = [sample.labels["model"] for sample in cost.samples]
    assert sorted(models) == ["__overflow__", "m0", "m1", "m2"]
    nanos = sorted(round(sample.value * 1e9) for sample in cost.samples)
    assert sum(nanos) == sum(a.cost_nanos for a in series.values()), "every nano-dollar, once"
    overflow = next(s for s in cost.samples if s.labels["model"] == "__overflow__")
    assert round(overflow.value * 1e9) == sum(1_000_000 * (i + 1) for i in range(3, 10))
