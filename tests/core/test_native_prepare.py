"""The compiled ``prepare_batch`` (native/src/prepare.rs) against the Python code it stands in for.

For any batch, ``prepare_batch`` with the compiled ``prepare_spans`` must end as the Python loop ends: the same
starts and the same stamped, priced spans (compared encoded, so an int price is not a float one), or the same
rejection (message and reason). Prices come from the real price table: linear models priced in Rust once their
rates are known, linear or tiered by input tokens; unknown models by the pricer.
"""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.core.test_native import REQUIRED
from tokentrace.api.embedded import price_table
from tokentrace.config import Config
from tokentrace.core import ingest, limits, native
from tokentrace.core.codec import encode_wire
from tokentrace.core.ingest import CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE, SpanRejected, prepare_batch
from tokentrace.core.pricing import PriceTable
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms

pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.prepare_spans is None, reason="compiled module not built")]

NOW = 1_780_000_000_000
MINUTE = 60_000
DAY = 86_400_000
OLDEST = NOW - 30 * DAY
SKEW = 5 * MINUTE
#: One table for every example, as a server has: rates learned in one batch price the next one in Rust.
PRICER = price_table(Config())
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-haiku-20241022", "gemini-1.5-flash", "no-such-model", "m" * 257]


def _text(cap: int) -> st.SearchStrategy[str]:
    return st.sampled_from(["a", "é" * cap, "é" * (cap + 1)])


_VARIATIONS: dict[str, st.SearchStrategy[Any]] = {
    "trace_id": st.sampled_from(["t2", "i" * 256, "i" * 257]),
    "span_id": st.sampled_from(["s2", "i" * 257]),
    "parent_span_id": st.sampled_from([None, "p", "p" * 257]),
    "name": _text(limits.MAX_NAME_CHARS),
    "model": st.sampled_from(MODELS),
    "provider": st.sampled_from(["", "openai", "anthropic", "google", "x" * 257]),
    "caller": st.sampled_from(["", "chat", "c" * 257]),
    "prompt_tokens": st.one_of(st.none(), st.integers(0, 10**7), st.integers(0, 10**12 - 10**5)),
    "comp_tokens": st.one_of(st.none(), st.integers(0, 10**5)),
    "total_tokens": st.one_of(st.none(), st.integers(0, 10**5)),
    "cost_usd": st.one_of(st.none(), st.floats(0, 10), st.integers(0, 10)),
    "latency_ms": st.one_of(st.none(), st.floats(0, 1e9), st.integers(0, 10**6)),
    "error": st.one_of(st.none(), _text(limits.MAX_ERROR_CHARS)),
    "started_at": st.one_of(
        st.none(),
        st.integers(OLDEST - DAY, NOW + 2 * SKEW).map(format_ms),
        st.sampled_from([format_ms(OLDEST - 1), format_ms(OLDEST), format_ms(NOW + SKEW), format_ms(NOW + SKEW + 1)]),
    ),
    "ended_at": st.one_of(st.none(), st.sampled_from([format_ms(NOW + SKEW), format_ms(NOW + SKEW + 1)])),
    "attributes": st.one_of(
        st.dictionaries(
            st.sampled_from(["workflow", "eval.score", "k" * 257, CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE]),
            st.one_of(st.integers(0, 100), st.floats(0, 1), st.booleans(), _text(limits.MAX_ATTRIBUTE_VALUE_CHARS)),
            max_size=3,
        ),
        st.sampled_from(
            [
                {f"k{n}": n for n in range(limits.MAX_ATTRIBUTES)},
                {f"k{n}": n for n in range(limits.MAX_ATTRIBUTES + 1)},
                {f"k{n}": "v" * 4000 for n in range(9)},  # over MAX_ATTRIBUTES_CHARS together
            ]
        ),
    ),
}


@st.composite
def spans(draw: st.DrawFn) -> Span:
    """A decoded span: the usual one, or with a field or two varied (at or past a cap, out of the time bounds)."""
    fields: dict[str, Any] = {
        "trace_id": "t1",
        "span_id": "s1",
        "name": "chat",
        "model": draw(st.sampled_from(MODELS[:4])),
        "provider": "",
        "prompt_tokens": draw(st.integers(0, 10**6)),
        "comp_tokens": draw(st.integers(0, 10**4)),
        "latency_ms": draw(st.one_of(st.floats(0, 1e5), st.integers(0, 10**5))),
        "started_at": format_ms(draw(st.integers(OLDEST, NOW + SKEW))),
        "attributes": {"workflow": "w", "eval.score": 0.5},
    }
    for name in draw(st.lists(st.sampled_from(sorted(_VARIATIONS)), max_size=2)):
        fields[name] = draw(_VARIATIONS[name])
    try:
        return Span(**fields)
    except ValueError:
        assume(False)
        raise


def _outcome(batch: list[Span], pricer: PriceTable | None) -> tuple[Any, bytes]:
    """The starts and the spans encoded, or the rejection."""
    try:
        result: Any = prepare_batch(batch, NOW, pricer, OLDEST, SKEW)
    except SpanRejected as exc:
        return ("rejected", str(exc), exc.reason), b""
    return result, encode_wire(batch)


@given(st.lists(spans(), max_size=5), st.booleans())
@settings(max_examples=1500, deadline=None)
def test_the_compiled_prepare_ends_as_the_python_loop(batch: list[Span], priced: bool) -> None:
    pricer = PRICER if priced else None
    compiled, reference = copy.deepcopy(batch), copy.deepcopy(batch)
    got = _outcome(compiled, pricer)
    with mock.patch.object(native, "prepare_spans", None):
        expected = _outcome(reference, pricer)
    assert got == expected


def _usual(model: str, prompt: int | None, comp: int | None, provider: str = "") -> Span:
    return Span(
        trace_id="t",
        span_id="s",
        model=model,
        provider=provider,
        prompt_tokens=prompt,
        comp_tokens=comp,
        started_at=format_ms(NOW - MINUTE),
    )


def _priced_here(model: str, prompt: int | None, comp: int) -> tuple[Span, list[int], PriceTable]:
    """One span priced by the compiled prepare with the rates a first batch of ``model`` taught it."""
    table = PriceTable()
    warm = [_usual(model, 1, 1)]
    prepare_batch(warm, NOW, table, OLDEST, SKEW)  # the pricer prices; its linear or tiered rates are learned
    span = _usual(model, prompt, comp)
    assert native.prepare_spans is not None
    rates = ingest._linear_rates(table)
    prepared = native.prepare_spans([span], OLDEST, NOW + SKEW, rates, ingest._PRICE_SCALE, ingest._CAPS, [])
    assert prepared is not None
    return span, prepared[1], table


@given(st.sampled_from(MODELS[:4]), st.one_of(st.none(), st.integers(0, 10**12)), st.integers(0, 10**12))
@settings(max_examples=1000)
def test_a_linear_or_tiered_price_is_the_pricers_to_the_bit(model: str, prompt: int | None, comp: int) -> None:
    span, to_price, table = _priced_here(model, prompt, comp)
    known = table.linear_rates(model) is not None or table.tiered_rates(model) is not None
    assert to_price == ([] if known else [0])  # priced here exactly when the model's rates are linear or tiered
    expected = table.cost(model, prompt or 0, comp)
    if known:
        assert msgspec.msgpack.encode(span.cost_usd) == msgspec.msgpack.encode(expected)


def test_a_tiered_price_at_each_tier_edge_is_the_pricers() -> None:
    tiers = PriceTable().tiered_rates("gemini-1.5-flash")
    assert tiers is not None, "the price table has a tiered model to test with"
    for start in tiers[0]:
        for prompt in (start - 1, start, start + 1):
            span, to_price, table = _priced_here("gemini-1.5-flash", prompt, 1000)
            assert to_price == []
            assert msgspec.msgpack.encode(span.cost_usd) == msgspec.msgpack.encode(
                table.cost("gemini-1.5-flash", prompt, 1000)
            )


def test_the_usual_batch_is_taken_by_the_compiled_prepare() -> None:
    table = PriceTable()
    prepare_batch([_usual("gpt-4o", 1, 1)], NOW, table, OLDEST, SKEW)
    batch = [_usual("gpt-4o", 100 + n, 20) for n in range(5)]
    with mock.patch.object(ingest, "_price_rest", side_effect=AssertionError("priced in Python")):
        starts = prepare_batch(batch, NOW, table, OLDEST, SKEW)
    assert starts == [NOW - MINUTE] * 5
    assert [span.cost_usd for span in batch] == [table.cost("gpt-4o", 100 + n, 20) for n in range(5)]
    assert all(span.ended_at == format_ms(NOW - MINUTE) for span in batch)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"started_at": format_ms(OLDEST - 1)}, "too_old"),
        ({"started_at": format_ms(NOW + SKEW + 1)}, "future"),
        ({"ended_at": format_ms(NOW + SKEW + 1)}, "future"),
        ({"model": "m" * 257}, "too_long"),
        ({"attributes": {"k": "v" * (limits.MAX_ATTRIBUTE_VALUE_CHARS + 1)}}, "too_long"),
    ],
)
def test_a_rejected_span_is_named_as_the_python_code_names_it(change: dict[str, Any], reason: str) -> None:
    fields = {"trace_id": "t", "span_id": "s", "model": "gpt-4o", "prompt_tokens": 1, "started_at": format_ms(NOW)}
    batch = [Span(**fields), Span(**{**fields, **change})]
    with pytest.raises(SpanRejected) as compiled:
        prepare_batch(copy.deepcopy(batch), NOW, PRICER, OLDEST, SKEW)
    with mock.patch.object(native, "prepare_spans", None), pytest.raises(SpanRejected) as reference:
        prepare_batch(copy.deepcopy(batch), NOW, PRICER, OLDEST, SKEW)
    assert (str(compiled.value), compiled.value.reason) == (str(reference.value), reference.value.reason)
    assert compiled.value.reason == reason and str(compiled.value).startswith("span 1: ")
