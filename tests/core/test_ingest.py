"""``prepare_spans`` (per-span outcomes, never raising) against ``prepare_batch`` on each span alone."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core.ingest import SpanRejected, prepare_batch, prepare_spans
from tokentrace.core.span import Span, span_time_ms
from tokentrace.core.timefmt import format_ms

NOW = 1_780_000_000_123
MINUTE_MS = 60_000
OLDEST = NOW - 60 * MINUTE_MS
SKEW = 5 * MINUTE_MS


class Pricer:
    """A micro-dollar per token for model "m"; unknown otherwise; "bad" cannot be priced."""

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        comp_tokens: int,
        provider: str | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float | None:
        if model == "bad":
            raise ValueError("cannot price this call")
        return (prompt_tokens + comp_tokens + cache_read_tokens) / 1e6 if model == "m" else None


@st.composite
def spans(draw: st.DrawFn) -> Span:
    fields: dict[str, object] = {
        "model": draw(st.sampled_from(["m", "other", "bad"])),
        "prompt_tokens": draw(st.one_of(st.none(), st.integers(0, 9000))),
        "total_tokens": 10,
        "latency_ms": draw(st.one_of(st.none(), st.integers(0, 10**6), st.floats(0, 1e6))),
        "attributes": draw(st.sampled_from([{}, {"gen_ai.usage.cache_read_input_tokens": 7}])),
    }
    if draw(st.booleans()):
        fields["cost_usd"] = 0.25
    when = draw(st.sampled_from(["none", "start", "end", "both"]))
    at = NOW + draw(st.integers(-90 * MINUTE_MS, 10 * MINUTE_MS))
    if when in ("start", "both"):
        fields["started_at"] = format_ms(at)
    if when in ("end", "both"):
        fields["ended_at"] = format_ms(at + draw(st.integers(0, MINUTE_MS)))
    return msgspec.convert(fields, Span)


def _copy(span: Span) -> Span:
    return msgspec.json.decode(msgspec.json.encode(span), type=Span)


def _fields(span: Span) -> tuple[str | None, str | None, float | None]:
    return span.started_at, span.ended_at, span.cost_usd


@given(st.lists(spans(), max_size=20), st.sampled_from([None, Pricer()]))
@settings(max_examples=300, deadline=None)
def test_each_outcome_is_prepare_batch_of_that_span_alone(batch: list[Span], pricer: Pricer | None) -> None:
    alone = [_copy(span) for span in batch]
    outcomes = prepare_spans(batch, NOW, pricer, OLDEST, SKEW)
    for index, (span, single, outcome) in enumerate(zip(batch, alone, outcomes, strict=True)):
        try:
            expected: int | tuple[str, str] = prepare_batch([single], NOW, pricer, OLDEST, SKEW)[0]
        except SpanRejected as exc:
            expected = (exc.reason, str(exc).replace("span 0:", f"span {index}:", 1))
        if isinstance(outcome, SpanRejected):
            assert (outcome.reason, str(outcome)) == expected
        else:
            assert outcome == expected == span_time_ms(span)
        assert _fields(span) == _fields(single)


def test_prepare_batch_names_the_first_bad_span_and_leaves_the_rest() -> None:
    batch = [
        Span(model="m", prompt_tokens=1, started_at=format_ms(NOW)),
        Span(model="m", prompt_tokens=1, started_at=format_ms(NOW + 20 * MINUTE_MS)),
        Span(model="m", prompt_tokens=1),
    ]
    with pytest.raises(SpanRejected, match=re.escape("span 1: started_at")) as caught:
        prepare_batch(batch, NOW, Pricer(), OLDEST, SKEW)
    assert caught.value.reason == "future"
    assert batch[0].cost_usd == 1e-6 and batch[2].started_at is None and batch[2].cost_usd is None


def test_prepare_batch_returns_the_times_spans_count_at() -> None:
    batch = [Span(model="m", prompt_tokens=1), Span(model="m", prompt_tokens=1, started_at=format_ms(NOW - 5))]
    assert prepare_batch(batch, NOW, None, OLDEST, SKEW) == [NOW, NOW - 5]


def test_an_unreadable_timestamp_is_an_invalid_outcome() -> None:
    span = Span(model="m", prompt_tokens=1)
    span.started_at = "not a time"  # set after validation: only a bug could do this
    (outcome,) = prepare_spans([span], NOW, None, OLDEST, SKEW)
    assert isinstance(outcome, SpanRejected) and outcome.reason == "invalid" and "span 0:" in str(outcome)
