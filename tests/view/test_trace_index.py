"""The trace index commands: the compiled builder equals the Python reference, and both say what they mean."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core import native
from tokentrace.core.buckets import SEP
from tokentrace.core.codec import decode_wire, encode_wire
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms
from tokentrace.view import keys
from tokentrace.view.keys import decode_span, encode_span, trace_index_commands, trace_spans

needs_native = pytest.mark.skipif(native.trace_index_commands is None, reason="compiled module not built")
ids = st.one_of(st.sampled_from(["t1", "t2", "trace-ü", "x" * 40]), st.text(min_size=1, max_size=300))


@contextmanager
def python_only() -> Iterator[None]:
    compiled = native.trace_index_commands
    native.trace_index_commands = None
    try:
        yield
    finally:
        native.trace_index_commands = compiled


@st.composite
def pairs(draw: st.DrawFn) -> list[tuple[Span, int]]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        fields: dict[str, Any] = {"trace_id": draw(ids), "span_id": draw(ids), "model": "gpt-4o", "prompt_tokens": 1}
        fields["name"] = draw(st.text(max_size=400))  # lines of every str and array header size
        at = draw(st.integers(0, 2**53))
        out.append((msgspec.convert(fields, Span), at))
    return out


PREFIX, LISTING = "tt:t:", "tt:traces"


def commands(spans: list[Any], per_call: int, per_trace: int) -> list[tuple[bytes, int]]:
    return trace_index_commands(spans, PREFIX, LISTING, per_call, per_trace)


def python_commands(spans: list[Any], per_call: int, per_trace: int) -> list[tuple[bytes, int]]:
    with python_only():
        return commands(spans, per_call, per_trace)


def parse_resp(data: bytes) -> list[list[bytes]]:
    """The commands in ``data`` (arrays of bulk strings), insisting on the exact framing."""
    out: list[list[bytes]] = []
    at = 0
    while at < len(data):
        assert data[at : at + 1] == b"*"
        end = data.index(b"\r\n", at)
        count, at = int(data[at + 1 : end]), end + 2
        args = []
        for _ in range(count):
            assert data[at : at + 1] == b"$"
            end = data.index(b"\r\n", at)
            size, at = int(data[at + 1 : end]), end + 2
            args.append(data[at : at + size])
            assert data[at + size : at + size + 2] == b"\r\n"
            at += size + 2
        out.append(args)
    return out


@needs_native
@given(pairs(), st.integers(1, 5), st.integers(1, 4))
@settings(max_examples=400)
def test_the_compiled_commands_equal_the_python_ones(
    spans: list[tuple[Span, int]], per_call: int, per_trace: int
) -> None:
    assert commands(spans, per_call, per_trace) == python_commands(spans, per_call, per_trace)


def test_a_large_batch_gives_the_same_commands_both_ways() -> None:
    """Over both limits (2,000 commands per pipeline and spans per command), with lines of many sizes."""
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
    expected = python_commands(spans, keys.INDEX_TRACES_PER_CALL, keys.INDEX_SPANS_PER_TRACE)
    # 3,000 short traces and "long" (3,000 spans, in 2 commands) appended; then 3,001 traces listed
    assert [replies for _, replies in expected] == [2000, 1002, 1, 1]
    assert trace_index_commands(spans, PREFIX, LISTING) == expected


@given(pairs(), st.integers(1, 5), st.integers(1, 4))
@settings(max_examples=200)
def test_commands_group_spans_by_trace_with_the_earliest_start(
    spans: list[tuple[Span, int]], per_call: int, per_trace: int
) -> None:
    """Reading the commands back gives every span once, under its trace, listed with the trace's earliest start:
    first pipelines of APPENDs of JSON lines (one reply each), then of one ZADD LT each, whose members come in
    order of start, then id, each trace once."""
    expected: dict[str, tuple[int, list[Span]]] = {}
    for span, at in spans:
        start, members = expected.get(span.trace_id, (at, []))
        expected[span.trace_id] = (min(start, at), [*members, span])
    appended: dict[str, list[Span]] = {}
    order: list[str] = []
    listed: list[tuple[int, str]] = []
    for pipeline, replies in python_commands(spans, per_call, per_trace):
        sent = parse_resp(pipeline)
        if sent[0][0] == b"ZADD":
            [zadd] = sent
            assert replies == 1 and zadd[:3] == [b"ZADD", LISTING.encode(), b"LT"]
            assert 1 <= (len(zadd) - 3) // 2 <= per_call and len(zadd) % 2 == 1
            listed += [(int(score), member.decode()) for score, member in zip(zadd[3::2], zadd[4::2], strict=True)]
            continue
        assert not listed, "every APPEND comes before the listing"
        assert replies == len(sent) and 1 <= len(sent) <= per_call
        for append in sent:
            assert append[0] == b"APPEND" and append[1].startswith(PREFIX.encode()) and len(append) == 3
            trace_id = append[1][len(PREFIX) :].decode()
            assert append[2].endswith(b"\n")
            members = [decode_span(line) for line in append[2].split(b"\n")[:-1]]
            assert 1 <= len(members) <= per_trace
            if trace_id not in appended:
                order.append(trace_id)
            appended[trace_id] = [*appended.get(trace_id, []), *members]
    assert listed == sorted(listed)  # in order of start, then id
    starts = {trace_id: start for start, trace_id in listed}
    assert len(starts) == len(listed) and set(starts) == set(appended)  # each trace listed once
    assert {t: (starts[t], members) for t, members in appended.items()} == expected
    assert order == list(expected)  # appended in order of first appearance


def _batch(payload: bytes) -> Any:
    """The compiled batch of a message (``native.decode_batch``, as a worker makes it)."""
    assert native.decode_batch is not None
    batch = native.decode_batch(payload, 0, 2**62, 60_000, 0, False, 10**12, 1e6, 1e10, 1e6, SEP)
    assert batch is not None
    return batch


@needs_native
@given(st.lists(st.tuples(pairs(), st.booleans()), max_size=4), st.integers(1, 5), st.integers(1, 4))
@settings(max_examples=200)
def test_compiled_batches_index_as_their_spans_do(
    runs: list[tuple[list[tuple[Span, int]], bool]], per_call: int, per_trace: int
) -> None:
    """Items that are compiled batches give the commands of their spans as pairs, mixed with pairs or not."""
    items: list[Any] = []
    as_pairs: list[tuple[Span, int]] = []
    for run, compiled in runs:
        for span, at in run:
            span.started_at = format_ms(at % 2**40)
        payload = encode_wire([span for span, _ in run])
        run_pairs = [(span, span.stamp(0)) for span in decode_wire(payload)]  # as a worker's Python path does
        as_pairs += run_pairs
        if compiled and run:
            items.append(_batch(payload))
        else:
            items += run_pairs
    expected = python_commands(as_pairs, per_call, per_trace)
    assert commands(items, per_call, per_trace) == expected
    assert python_commands(items, per_call, per_trace) == expected


def test_a_trace_reads_back_each_span_once_the_last_line_winning() -> None:
    """A replay appends spans again; an earlier build's hash values merge in."""
    first = Span(trace_id="t", span_id="a", model="m", prompt_tokens=1)
    again = Span(trace_id="t", span_id="a", model="m", prompt_tokens=2)
    other = Span(trace_id="t", span_id="b", model="m", prompt_tokens=3)
    lines = b"".join(encode_span(s) + b"\n" for s in (first, other, again))
    assert trace_spans(lines) == [again, other]
    assert trace_spans(None, [encode_span(first)]) == [first]
    assert trace_spans(b"", []) == []
    assert trace_spans(encode_span(again) + b"\n", [encode_span(first), encode_span(other)]) == [again, other]


@needs_native
def test_the_compiled_builder_declines_what_it_does_not_expect() -> None:
    span = Span(trace_id="t", span_id="s", model="m", prompt_tokens=1)
    line = msgspec.json.encode(span) + b"\n"
    compiled = native.trace_index_commands
    assert compiled is not None

    def build(spans: object, lines: bytes, per_call: int, per_trace: int) -> list[tuple[bytes, int]] | None:
        assert compiled is not None
        return compiled(spans, lines, PREFIX.encode(), LISTING.encode(), per_call, per_trace)

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
    assert build([(span, 1)], line, 1, 1) == python_commands([(span, 1)], 1, 1)
