"""``native.decode_batch`` (native/src/wire.rs) against the Python code it stands in for.

A message the compiled decoder takes must be one the Python code accepts whole (``decode_wire``, ``Span.stamp``
and the worker's bounds, price and horizon checks), with the same JSON per span, the same start and bucket per
span, and the same aggregates once added (``BucketState.add_batches`` against ``BucketState.add`` per span).
It may decline anything; ``tests/processors/test_state.py`` checks that the worker decides the same either way.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_batch_add import caps, reference_bucket_add
from tests.core.test_native import REQUIRED, python_path, span_fields
from tokentrace.core import native
from tokentrace.core.buckets import SEP, BucketState, Caps
from tokentrace.core.codec import decode_wire, encode_wire
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span
from tokentrace.core.timefmt import format_ms, parse_rfc3339_ms

pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.decode_batch is None, reason="compiled module not built")]

NOW = 1_780_000_000_000
MINUTE = 60_000
_lines = msgspec.json.Encoder().encode_lines


def _decode(payload: bytes, oldest: int, latest: int, horizon: int, priced: bool) -> Any:
    assert native.decode_batch is not None
    return native.decode_batch(
        payload, oldest, latest, MINUTE, horizon, priced, MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, SEP
    )


def _usual(i: int, **fields: Any) -> dict[str, Any]:
    """A span as the SDK and ``POST /spans`` send it."""
    span = {
        "trace_id": f"t{i // 3}",
        "span_id": f"s{i}",
        "model": "gpt-4o",
        "provider": "openai",
        "prompt_tokens": 10 + i,
        "comp_tokens": 5,
        "cost_usd": 0.0012,
        "latency_ms": 250 + i,
        "caller": "chat",
        "started_at": format_ms(NOW - i * 7_000),
        "attributes": {"workflow": f"w{i % 2}", "eval.score": 0.5},
    }
    return {**span, **fields}


texts = st.one_of(st.sampled_from(["", "x", 'q"\\', "é\u2028\U0001f600", "\x00\x1f\x7f"]), st.text(max_size=5))
_VARIATIONS: dict[str, st.SearchStrategy[Any]] = {
    "name": texts,
    "parent_span_id": st.one_of(st.none(), texts),
    "error": st.one_of(st.none(), texts),
    "trace_id": st.one_of(texts, st.integers()),
    "span_id": texts,
    "status": st.sampled_from(["ok", "error", "timeout", "OK", None]),
    "started_at": st.sampled_from([None, format_ms(NOW), format_ms(NOW - 10 * MINUTE), "2026-11-26T03:00:00Z"]),
    "ended_at": st.sampled_from([None, format_ms(NOW + 1500), format_ms(NOW - MINUTE), "x"]),
    "cost_usd": st.one_of(st.none(), st.floats(0, 10), st.integers(0, 10), st.just(math.inf)),
    "latency_ms": st.one_of(st.none(), st.floats(0, 1e5), st.integers(0, 10**5), st.just(0.5), st.just(2.5)),
    "comp_tokens": st.one_of(st.none(), st.integers(0, 10), st.just(1.0), st.just(True)),
    "unknown": st.integers(),
    "attributes": st.dictionaries(
        texts,
        st.one_of(
            texts,
            st.integers(-(2**63), 2**64 - 1),
            st.floats(allow_nan=True),
            st.booleans(),
            st.none(),
            st.sampled_from([MAX_SCORE, 1e-7, 1e16, 123.0]),
        ),
        max_size=3,
    ),
}
#: None, one or two fields of a usual span varied.
extras = st.lists(st.sampled_from(sorted(_VARIATIONS)), max_size=2).flatmap(
    lambda keys: st.fixed_dictionaries({key: _VARIATIONS[key] for key in keys})
)


@st.composite
def messages(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Mostly usual spans with one field or another varied, now and then a span of any fields."""
    spans: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 19)) == 0:
            spans.append(draw(span_fields()))
        else:
            spans.append(_usual(i, **draw(extras)))
    return spans


def _python(payload: bytes, oldest: int, latest: int, horizon: int, priced: bool) -> list[tuple[Span, int]] | None:
    """The spans and starts if the Python code accepts every span of the message, else None."""
    try:
        spans = decode_wire(payload)
    except (msgspec.DecodeError, ValueError):
        return None
    pairs = []
    for span in spans:
        try:
            at = span.stamp(NOW)
        except ValueError:
            return None
        priceable = span.prompt_tokens is not None or span.comp_tokens is not None
        if not oldest <= at <= latest or at - at % MINUTE < horizon or (priced and span.cost_usd is None and priceable):
            return None
        if span.ended_at is not None and parse_rfc3339_ms(span.ended_at) > latest:
            return None  # ends too far in the future: rejected
        pairs.append((span, at))
    return pairs


def _state(spans: list[Span], cap: Caps) -> bytes:
    state = BucketState()
    for span in spans:
        reference_bucket_add(state, span, cap)
    return msgspec.msgpack.encode(state)


@given(messages(), st.sampled_from([0, NOW - 5 * MINUTE]), st.sampled_from([0, NOW - MINUTE, NOW]), st.booleans(), caps)
@settings(max_examples=1500, deadline=None)
def test_a_batch_is_what_the_python_code_makes_of_the_message(
    fields: list[dict[str, Any]], oldest: int, horizon: int, priced: bool, cap: Caps
) -> None:
    try:
        payload = msgspec.msgpack.encode({"v": 1, "spans": fields})
    except (OverflowError, TypeError):
        return
    latest = NOW + MINUTE
    batch = _decode(payload, oldest, latest, horizon, priced)
    if batch is None:
        return
    with python_path():
        expected = _python(payload, oldest, latest, horizon, priced)
    assert expected is not None, "taken by the compiled decoder, not accepted whole by the Python code"
    spans = [span for span, _ in expected]
    assert len(batch) == len(spans)
    assert batch.lines() == _lines(spans)
    assert batch.starts() == [at for _, at in expected]
    buckets: dict[int, int] = {}
    for _, at in expected:
        buckets[at - at % MINUTE] = buckets.get(at - at % MINUTE, 0) + 1
    assert batch.buckets() == list(buckets.items())

    whole = BucketState()
    whole.add_batches([(batch, list(buckets))], cap)
    assert msgspec.msgpack.encode(whole) == _state(spans, cap)
    first = list(buckets)[:1]
    part = BucketState()
    part.add_batches([(batch, first), (batch, first)], cap)  # twice: each segment counts
    chosen = [span for span, at in expected if at - at % MINUTE in first]
    assert msgspec.msgpack.encode(part) == _state(chosen + chosen, cap)


def test_the_usual_message_is_taken_and_anything_else_declined() -> None:
    usual = [_usual(i) for i in range(6)]
    take = lambda spans, **kw: _decode(  # noqa: E731
        msgspec.msgpack.encode({"v": 1, "spans": spans}), kw.get("oldest", 0), NOW + MINUTE, 0, kw.get("priced", True)
    )
    batch = take(usual)
    assert batch is not None and len(batch) == 6
    assert batch.buckets() == [(NOW - NOW % MINUTE, 6)]  # 0-35 s before NOW, 40 s into its minute
    assert take([]) is not None and len(take([])) == 0
    # The SDK's own encoding of the same spans (fields in the struct's order), and the same fields in reverse order.
    in_order = encode_wire([msgspec.convert(s, Span) for s in usual])
    spans = msgspec.msgpack.decode(in_order)["spans"]
    reversed_fields = msgspec.msgpack.encode({"v": 1, "spans": [dict(reversed(span.items())) for span in spans]})
    decoded = [_decode(payload, 0, NOW + MINUTE, 0, True) for payload in (in_order, reversed_fields)]
    assert decoded[0] is not None and decoded[1] is not None
    assert decoded[0].lines() == decoded[1].lines() and decoded[0].buckets() == decoded[1].buckets()

    declined = {
        "no started_at (stamped with the arrival time)": [_usual(0, started_at=None)],
        "an id to generate": [_usual(0, span_id="")],
        "a float token count": [_usual(0, prompt_tokens=10.0)],
        "an unknown field": [_usual(0, extra=1)],
        "a span to price": [_usual(0, cost_usd=None)],
        "a bad status": [_usual(0, status="fine")],
        "a non-ASCII model": [_usual(0, model="mödel")],
        "a null attribute": [_usual(0, attributes={"a": None})],
        "a boolean score": [_usual(0, attributes={"eval.score": True})],
        "a nested attribute": [_usual(0, attributes={"a": [1]})],
        "a non-finite attribute": [_usual(0, attributes={"a": math.nan})],
        "a timestamp to normalise": [_usual(0, started_at="2026-05-28T20:26:40Z")],
        "one of several spans": [*usual, _usual(9, total_tokens=-1)],
    }
    for reason, spans in declined.items():
        assert take(spans) is None, reason
    assert take(usual, oldest=NOW) is None  # a span too old
    assert take([_usual(0, cost_usd=None)], priced=False) is not None  # nothing to price with
    for payload in (b"", b"\xc1", msgspec.msgpack.encode({"v": 2, "spans": []}), encode_wire([])[:-1]):
        assert _decode(payload, 0, NOW, 0, False) is None
    assert _decode(encode_wire([]) + b"\x00", 0, NOW, 0, False) is None  # trailing bytes


def test_a_span_ending_past_the_latest_time_is_declined() -> None:
    """As ``prepare_spans`` rejects it (``future``), whether its end is given or derived from its latency."""
    latest = NOW + MINUTE
    for fields in ({"ended_at": format_ms(latest + 1)}, {"started_at": format_ms(latest), "latency_ms": 1}):
        assert _decode(msgspec.msgpack.encode({"v": 1, "spans": [_usual(0, **fields)]}), 0, latest, 0, False) is None
    at_the_edge = _usual(0, started_at=format_ms(latest), latency_ms=0)
    assert _decode(msgspec.msgpack.encode({"v": 1, "spans": [at_the_edge]}), 0, latest, 0, False) is not None


def test_a_live_batch_leaves_a_span_without_latency_to_python() -> None:
    """``live``: the caller's spans hold no latency where none was given (a decoded copy derives one)."""
    assert native.decode_batch is not None
    payload = msgspec.msgpack.encode({"v": 1, "spans": [_usual(0, latency_ms=None, ended_at=format_ms(NOW))]})
    args = (payload, 0, NOW + MINUTE, MINUTE, 0, False, MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, SEP)
    assert native.decode_batch(*args) is not None
    assert native.decode_batch(*args, live=True) is None
