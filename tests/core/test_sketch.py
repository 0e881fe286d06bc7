"""The sketch against a brute-force oracle: every quantile within the stated relative error."""

from __future__ import annotations

import math

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core.sketch import RELATIVE_ACCURACY, Sketch

QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
values = st.floats(min_value=-1e6, max_value=1e7, allow_nan=False, allow_infinity=False)


def oracle(data: list[float], q: float) -> float:
    ordered = sorted(data)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_close(got: float | None, want: float) -> None:
    assert got is not None
    assert abs(got - want) <= RELATIVE_ACCURACY * abs(want) + 1e-12, (got, want)


@given(st.lists(values, min_size=1, max_size=400))
@settings(max_examples=300)
def test_quantiles_within_relative_error(data: list[float]) -> None:
    sketch = Sketch()
    for value in data:
        sketch.add(value)
    assert sketch.count == len(data)
    for q in QUANTILES:
        assert_close(sketch.quantile(q), oracle(data, q))


@given(st.lists(st.lists(values, max_size=60), min_size=1, max_size=8))
@settings(max_examples=150)
def test_merge_equals_adding_everything(parts: list[list[float]]) -> None:
    merged = Sketch()
    whole = Sketch()
    for part in parts:
        piece = Sketch()
        for value in part:
            piece.add(value)
            whole.add(value)
        merged.merge(piece)
    assert merged == whole


def test_empty_sketch_has_no_quantile() -> None:
    assert Sketch().quantile(0.5) is None


def test_zero_and_exact_extremes() -> None:
    sketch = Sketch()
    for value in (0.0, 0.0, 5.0):
        sketch.add(value)
    assert sketch.quantile(0.0) == 0.0
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(1.0) == 5.0


def test_sketch_round_trips_through_msgpack() -> None:
    sketch = Sketch()
    for value in (1.5, 20.0, 3000.0, -2.0):
        sketch.add(value)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(sketch), type=Sketch)
    assert decoded == sketch
    assert decoded.quantile(0.5) == sketch.quantile(0.5)


@given(st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_the_inlined_bucket_key_is_ddsketchs_own(value: float) -> None:
    """tokentrace.core.sketch inlines LogarithmicMapping.key() from ddsketch's private constants."""
    from ddsketch.mapping import LogarithmicMapping

    from tokentrace.core.compat import installed_version
    from tokentrace.core.sketch import RELATIVE_ACCURACY, _key

    expected = LogarithmicMapping(RELATIVE_ACCURACY).key(value)
    assert _key(value) == expected, f"ddsketch {installed_version('ddsketch')}: LogarithmicMapping.key changed"
