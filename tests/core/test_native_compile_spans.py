"""``native.compile_spans`` (native/src/wire.rs): ``encode_wire`` and ``decode_batch`` of it in one pass.

Whatever spans it takes, its message is ``encode_wire``'s byte for byte and its batch is the one
``decode_batch`` makes of that message (same spans, starts, buckets, JSON lines and aggregates); it declines
(None) only spans it does not read itself (not exactly a ``Span``, a value that is not a plain ``str``, ``int``
of 64 bits, ``float``, ``bool`` or None) or a message ``decode_batch`` declines.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_batch_add import caps
from tests.core.test_native import REQUIRED
from tests.core.test_native_wire import MINUTE, NOW, _usual, extras
from tokentrace.core import native
from tokentrace.core.buckets import SEP, BucketState, Caps
from tokentrace.core.codec import encode_wire
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span

pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.compile_spans is None, reason="compiled module not built")]

_BOUNDS = (MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, SEP)


class _Text(str):
    """A str subclass: msgspec encodes it as a str, the compiled pass declines it."""


def _compile(spans: list[Span], oldest: int, horizon: int, priced: bool, live: bool) -> Any:
    assert native.compile_spans is not None
    return native.compile_spans(spans, oldest, NOW + MINUTE, MINUTE, horizon, priced, *_BOUNDS, live=live)


def _decode(payload: bytes, oldest: int, horizon: int, priced: bool, live: bool) -> Any:
    assert native.decode_batch is not None
    return native.decode_batch(payload, oldest, NOW + MINUTE, MINUTE, horizon, priced, *_BOUNDS, live=live)


def _plain(value: object) -> bool:
    if type(value) is int:
        return -(2**63) <= value < 2**63  # type: ignore[operator]
    return value is None or type(value) in (str, float, bool)


def _read_whole(span: Span) -> bool:
    """Every field a value the compiled pass reads itself."""
    fields = [getattr(span, name) for name in Span.__struct_fields__ if name != "attributes"]
    attributes = span.attributes
    return (
        type(span) is Span
        and all(_plain(value) for value in fields)
        and type(attributes) is dict
        and all(type(key) is str and _plain(value) and value is not None for key, value in attributes.items())
    )


#: What a caller may have set on a span after it was made (no check runs then).
_ODD: dict[str, Any] = {
    "prompt_tokens": 2**70,
    "comp_tokens": True,
    "cost_usd": float("nan"),
    "model": _Text("gpt-4o"),
    "caller": None,
    "name": 3,
    "attributes": {"a": None},
    "error": b"boom",
    "latency_ms": None,
}


@st.composite
def span_lists(draw: st.DrawFn) -> list[Span]:
    """Usual spans with one field or two varied (as ``POST /spans`` decodes them), now and then one set oddly."""
    spans: list[Span] = []
    for i in range(draw(st.integers(1, 8))):
        try:
            span = msgspec.convert(_usual(i, **draw(extras)), Span)
        except (msgspec.ValidationError, ValueError):
            continue
        if draw(st.integers(0, 9)) == 0:
            name = draw(st.sampled_from(sorted(_ODD)))
            setattr(span, name, _ODD[name])
        if draw(st.integers(0, 9)) == 0:
            span.attributes = {
                **span.attributes,
                draw(st.sampled_from(["x", "é"])): draw(
                    st.sampled_from([1, -7, 2**40, "v", 0.25, False, [1], _Text("t"), 2**64])
                ),
            }
        spans.append(span)
    return spans


@given(
    span_lists(), st.sampled_from([0, NOW - 5 * MINUTE]), st.sampled_from([0, NOW]), st.booleans(), st.booleans(), caps
)
@settings(max_examples=1000, deadline=None)
def test_compiled_spans_are_the_encoded_message_and_its_batch(
    spans: list[Span], oldest: int, horizon: int, priced: bool, live: bool, cap: Caps
) -> None:
    got = _compile(spans, oldest, horizon, priced, live)
    try:
        payload = encode_wire(spans)
    except (OverflowError, TypeError, msgspec.EncodeError):
        assert got is None
        return
    expected = _decode(payload, oldest, horizon, priced, live)
    if got is None:
        assert expected is None or not spans or not all(map(_read_whole, spans)), "declined a batch it reads"
        return
    message, batch = got
    assert message == payload
    assert expected is not None
    assert len(batch) == len(expected)
    assert batch.starts() == expected.starts()
    assert batch.buckets() == expected.buckets()
    assert batch.lines() == expected.lines()
    assert batch.trace_ids() == expected.trace_ids()
    assert counted(batch, cap) == counted(expected, cap)


def counted(batch: Any, cap: Caps) -> bytes:
    """The encoded state a fresh bucket holds once ``batch``'s spans are added (every bucket of it, together)."""
    state = BucketState()
    state.add_batches([(batch, [start for start, _ in batch.buckets()])], cap)
    return msgspec.msgpack.encode(state)


def test_the_usual_batch_is_taken_and_an_odd_one_declined() -> None:
    usual = [msgspec.convert(_usual(i), Span) for i in range(6)]
    got = _compile(usual, 0, 0, True, True)
    assert got is not None and got[0] == encode_wire(usual) and len(got[1]) == 6
    assert _compile([], 0, 0, True, True) is None  # nothing to read: the caller encodes it

    class Other(Span):
        pass

    assert _compile([Other(**msgspec.structs.asdict(usual[0]))], 0, 0, True, True) is None
    for name, value in _ODD.items():
        odd = msgspec.structs.replace(usual[1])
        setattr(odd, name, value)
        assert _compile([usual[0], odd], 0, 0, True, True) is None, name
