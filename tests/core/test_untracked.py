"""Aggregates' count lists are out of the cycle collector's sight (native/src/untrack.rs).

A full collection walked two lists per aggregate, collecting nothing, with the GIL held (bench/gc_pause.py: ~7x
as long as untracked, for the state a server built from 300k spans). Every path that makes aggregates leaves them untracked when the compiled module
is in use: a new ``Aggregate``, the kernel's counting (new aggregates are built whole), a thawed bucket and a
decoded view entry. If CPython's collector or ``PyObject_GC_UnTrack`` changes behaviour, these fail.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from tokentrace.core import frozen, native
from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import BucketState, Caps
from tokentrace.core.span import Span
from tokentrace.view.schema import BucketEntry, decode_entry, encode_entry

REQUIRED = os.environ.get("TOKENTRACE_REQUIRE_NATIVE") == "1"
pytestmark = [] if REQUIRED else [pytest.mark.skipif(not native.AVAILABLE, reason="compiled module not built")]


def aggregates(state: BucketState) -> Iterator[Aggregate]:
    yield from state.series.values()
    for values in state.attributes.values():
        for by_series in values.values():
            yield from by_series.values()


def tracked_lists(state: BucketState) -> int:
    return sum(gc.is_tracked(a.latency_buckets) + gc.is_tracked(a.prompt_buckets) for a in aggregates(state))


def spans(n: int) -> list[Span]:
    return [
        Span(
            model=f"m{i % 7}",
            caller=f"c{i % 3}",
            prompt_tokens=i,
            latency_ms=10 * i,
            attributes={"route": f"r{i % 5}", "eval.score": 0.5},
        )
        for i in range(n)
    ]


def test_a_new_aggregate_has_untracked_count_lists() -> None:
    aggregate = Aggregate()
    assert not gc.is_tracked(aggregate.latency_buckets) and not gc.is_tracked(aggregate.prompt_buckets)
    assert aggregate.latency_buckets == [0] * len(aggregate.latency_buckets)


def test_a_plain_list_is_tracked_so_the_checks_can_fail() -> None:
    assert gc.is_tracked([0, 0])


def test_what_the_kernel_counts_into_a_bucket_is_untracked_and_survives_a_collection() -> None:
    state = BucketState()
    state.add_many(spans(200), Caps())
    assert sum(1 for _ in aggregates(state)) == 21 + 5 * 21
    assert tracked_lists(state) == 0
    before = [a.latency_buckets[:] for a in aggregates(state)]
    gc.collect()
    assert [a.latency_buckets for a in aggregates(state)] == before


def test_a_thawed_bucket_and_a_decoded_view_entry_are_untracked() -> None:
    state = BucketState()
    state.add_many(spans(50), Caps())
    thawed = frozen.thaw(frozen.freeze(state))
    assert thawed == state and tracked_lists(thawed) == 0
    entry = decode_entry(encode_entry(BucketEntry(offset=3, state=state)))
    assert isinstance(entry, BucketEntry) and entry.state == state and tracked_lists(entry.state) == 0


def test_untrack_state_counts_every_aggregate() -> None:
    assert native.untrack_state is not None
    state = BucketState()
    state.add_many(spans(30), Caps())
    assert native.untrack_state(state) == sum(1 for _ in aggregates(state))


def test_the_kernel_refuses_an_aggregate_class_whose_fields_it_would_misplace() -> None:
    """The kernel builds new aggregates positionally: a reordered class is a TypeError when the kernel is made."""
    import msgspec

    from tokentrace.core import aggregate as aggregate_module

    class Reordered(msgspec.Struct):
        ok: int = 0
        count: int = 0

    assert native.BucketKernel is not None and aggregate_module._KERNEL is not None
    with pytest.raises(TypeError, match="fields"):
        native.BucketKernel("\x1f", "__overflow__", "eval.score", Reordered, aggregate_module._KERNEL)


def test_the_trace_index_span_lists_are_untracked() -> None:
    from tokentrace.core.traces import TraceIndex

    index = TraceIndex(1000, 3_600_000)
    for n in range(20):
        index.add(Span(trace_id=f"t{n % 4}", model="m", prompt_tokens=n))
    traces = [index.get(f"t{n}") for n in range(4)]
    assert all(trace is not None and len(trace.spans) == 5 for trace in traces)
    assert not any(gc.is_tracked(trace.spans) for trace in traces if trace is not None)
