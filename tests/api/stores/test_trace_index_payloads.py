"""The trace index payloads: the compiled builder equals the Python reference, and both say what they mean."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.api.stores import redis_view
from tokentrace.api.stores.redis_view import decode_span, trace_index_payloads
from tokentrace.core import native
from tokentrace.core.span import Span

needs_native = pytest.mark.skipif(native.trace_index_payloads is None, reason="compiled module not built")
ids = st.one_of(st.sampled_from(["t1", "t2", "trace-ü", "x" * 40]), st.text(min_size=1, max_size=300))


@contextmanager
def python_only() -> Iterator[None]:
    compiled = native.trace_index_payloads
    native.trace_index_payloads = None
    try:
        yield
    finally:
        native.trace_index_payloads = compiled


@st.composite
def pairs(draw: st.DrawFn) -> list[tuple[Span, int]]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        fields: dict[str, Any] = {"trace_id": draw(ids), "span_id": draw(ids), "model": "gpt-4o", "prompt_tokens": 1}
        fields["name"] = draw(st.text(max_size=400))  # lines of every str and array header size
        at = draw(st.integers(0, 2**53))
        out.append((msgspec.convert(fields, Span), at))
    return out


def python_payloads(spans: list[tuple[Span, int]], per_call: int, per_trace: int) -> list[bytes]:
    with python_only():
        return trace_index_payloads(spans, per_call, per_trace)


@needs_native
@given(pairs(), st.integers(1, 5), st.integers(1, 4))
@settings(max_examples=400)
def test_the_compiled_payloads_equal_the_python_ones(
    spans: list[tuple[Span, int]], per_call: int, per_trace: int
) -> None:
    assert trace_index_payloads(spans, per_call, per_trace) == python_payloads(spans, per_call, per_trace)


def test_a_large_batch_gives_the_same_payloads_both_ways() -> None:
    """Over both limits (2,000 traces per call and spans per item), with lines of every str header size."""
    sizes = [0, 31, 32, 255, 256, 65_535, 65_536]
    spans = [
        (
            Span(
                trace_id=f"t{i % 3000}" if i < 6000 else "long",
                span_id=f"s{i}",
                model="m",
                prompt_tokens=1,
                name="n" * sizes[i % 7] if i % 500 == 0 else "n",
            ),
            7000 - i,
        )
        for i in range(9000)
    ]
    expected = python_payloads(spans, redis_view.INDEX_TRACES_PER_CALL, redis_view.INDEX_SPANS_PER_TRACE)
    assert len(expected) == 2
    assert trace_index_payloads(spans) == expected


@given(pairs(), st.integers(1, 5), st.integers(1, 4))
@settings(max_examples=200)
def test_payloads_group_spans_by_trace_with_the_earliest_start(
    spans: list[tuple[Span, int]], per_call: int, per_trace: int
) -> None:
    """Decoding the payloads gives every span once, under its trace, with the trace's earliest start."""
    expected: dict[str, tuple[int, list[Span]]] = {}
    for span, at in spans:
        start, members = expected.get(span.trace_id, (at, []))
        expected[span.trace_id] = (min(start, at), [*members, span])
    got: dict[str, tuple[int, list[Span]]] = {}
    order: list[str] = []
    for payload in python_payloads(spans, per_call, per_trace):
        items = msgspec.msgpack.decode(payload)
        assert 1 <= len(items) <= per_call
        for trace_id, start, fields in items:
            assert 2 <= len(fields) <= 2 * per_trace
            members = [decode_span(line.encode()) for line in fields[1::2]]
            assert fields[0::2] == [span.span_id for span in members]
            if trace_id not in got:
                order.append(trace_id)
            got[trace_id] = (int(start), [*got.get(trace_id, (0, []))[1], *members])
    assert got == expected
    assert order == list(expected)  # in order of first appearance


@needs_native
def test_the_compiled_builder_declines_what_it_does_not_expect() -> None:
    span = Span(trace_id="t", span_id="s", model="m", prompt_tokens=1)
    line = msgspec.json.encode(span) + b"\n"
    build = native.trace_index_payloads
    assert build is not None

    class Text(str):
        pass

    assert build(((span, 1),), line, 1, 1) is None  # not a list
    assert build([(span, 1, 2)], line, 1, 1) is None
    assert build([(span, True)], line, 1, 1) is None  # bool is an int, but str(True) is not a start
    assert build([(span, 2**70)], line, 1, 1) is None
    assert build([(span, 1)], line + line, 1, 1) is None  # more lines than spans
    assert build([(span, 1)], line[:-1], 1, 1) is None
    assert build([(span, 1)], line, 0, 1) is None
    odd = Span(trace_id="t", span_id="s", model="m", prompt_tokens=1)
    odd.trace_id = Text("t")
    assert build([(odd, 1)], line, 1, 1) is None
    assert build([(span, 1)], line, 1, 1) == python_payloads([(span, 1)], 1, 1)
