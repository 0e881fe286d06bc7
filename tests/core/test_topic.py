"""The span topic's one rule: a batch goes whole to its first trace's partition, cut only by size."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from tokentrace.core.codec import decode_wire
from tokentrace.core.span import Span
from tokentrace.core.topic import MESSAGE_ID_HEADER, header_id, message_id, partition_for, split_messages


def make_span(trace: str, seq: int, blob: str = "") -> Span:
    attributes: dict[str, str | int] = {"seq": seq}
    if blob:
        attributes["blob"] = blob
    return Span(
        trace_id=trace,
        model="gpt-4o-mini",
        provider="openai",
        name="chat",
        prompt_tokens=100 + seq,
        comp_tokens=seq,
        started_at="2025-01-01T00:00:00Z",
        latency_ms=12.5,
        attributes=attributes,
    )


@given(
    traces=st.lists(st.integers(0, 30), min_size=1, max_size=120),
    partitions=st.integers(1, 8),
    max_spans=st.integers(1, 50),
)
def test_a_batch_is_its_first_traces_partition_in_order_cut_only_by_span_count(
    traces: list[int], partitions: int, max_spans: int
) -> None:
    spans = [make_span(f"trace-{t}", i) for i, t in enumerate(traces)]
    ids = list(range(partitions))
    messages, too_large = split_messages(spans, ids, max_spans, 1 << 20)
    assert not too_large
    expected = partition_for(spans[0].trace_id, ids)
    assert {m.partition for m in messages} == {expected}
    assert {m.key for m in messages} == {spans[0].trace_id.encode()}
    assert [m.count for m in messages] == [len(spans[i : i + max_spans]) for i in range(0, len(spans), max_spans)]
    assert [s for m in messages for s in decode_wire(m.value)] == spans
    assert all(len(decode_wire(m.value)) == m.count for m in messages)


def test_batches_spread_over_partitions_by_their_first_trace() -> None:
    placed = {
        split_messages([make_span(f"trace-{t}", 0)], [0, 1, 2, 3], 10, 1 << 20)[0][0].partition for t in range(40)
    }
    assert placed == {0, 1, 2, 3}
    assert split_messages([], [0, 1], 10, 1 << 20) == ([], [])


def test_partition_matches_kafkas_keyed_partitioner() -> None:
    for trace in ("a", "trace-1", "0b2f5c3e-8f4e-4b8e-9a4f-1c2d3e4f5a6b"):
        assert partition_for(trace, list(range(6))) == DefaultPartitioner()(
            trace.encode(), list(range(6)), list(range(6))
        )


def test_messages_split_by_size_and_reject_a_span_too_large_alone() -> None:
    spans = [make_span("t", i, blob="x" * 300) for i in range(10)]
    huge = make_span("t", 99, blob="y" * 5000)
    messages, too_large = split_messages([*spans, huge], [0], max_spans=100, max_bytes=2000)
    assert too_large == [huge]
    assert len(messages) > 1 and all(len(m.value) <= 2000 for m in messages)
    assert [s.attributes["seq"] for m in messages for s in decode_wire(m.value)] == list(range(10))


def test_message_ids_and_headers() -> None:
    assert message_id("abc", 0) == "abc"
    assert len({message_id("k", part) for part in range(5)}) == 5
    assert header_id([("other", b"x"), (MESSAGE_ID_HEADER, b"k1")]) == "k1"
    assert header_id([]) is None and header_id(None) is None and header_id([(MESSAGE_ID_HEADER, b"")]) is None
