"""The compiled hot path, when this install has it.

``tokentrace._native`` is built from ``native/`` (Rust) by setuptools-rust when a Rust toolchain is present;
without one, the install still works and every name here is ``None``, so callers run the Python code it
mirrors. Each native function is checked against that Python code on generated input
(tests/core/test_native.py). ``TOKENTRACE_NATIVE=0`` turns it off (for comparing, or to rule it out).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokentrace._native import AggregateKernel as _AggregateKernel
    from tokentrace._native import Backlog as _Backlog
    from tokentrace._native import BucketKernel as _BucketKernel
    from tokentrace._native import WireBatch as _WireBatch

__all__ = [
    "AVAILABLE",
    "DISABLED",
    "AggregateKernel",
    "Backlog",
    "BucketKernel",
    "add_to_traces",
    "canonical_ms",
    "check_span",
    "compile_json",
    "compile_spans",
    "compiled_post_init",
    "crc32",
    "decode_batch",
    "match_spans",
    "newest_spans",
    "oldest_traces",
    "prepare_spans",
    "register_span",
    "route_spans",
    "span_field",
    "stamp",
    "trace_index_commands",
    "traces_take",
    "untrack_state",
    "untracked_zeros",
]

#: Set ``TOKENTRACE_NATIVE=0`` to run the Python code even where the compiled module is installed.
DISABLED = os.environ.get("TOKENTRACE_NATIVE", "1").strip() == "0"

AggregateKernel: type[_AggregateKernel] | None = None
BucketKernel: type[_BucketKernel] | None = None
Backlog: type[_Backlog] | None = None
check_span: Callable[[object, int, float, float, float], bool] | None = None
compiled_post_init: (
    Callable[[Callable[[Any], None], dict[str, Any], int, float, float, float], Callable[[Any], None]] | None
) = None
#: Where the spans' class keeps its fields, found on a sample span (native/src/slots.rs); whether found.
register_span: Callable[[object], bool] | None = None
#: ``getattr(span, name)`` as the compiled code reads it (from the field's slot), for the tests.
span_field: Callable[[object, str], Any] | None = None
canonical_ms: Callable[[object], int | None] | None = None
stamp: Callable[[object], int | None] | None = None
route_spans: (
    Callable[
        [object, int, int, int, int, bool, Callable[[int], bytes]],
        tuple[dict[bytes, list[Any]], list[tuple[Any, int]]] | None,
    ]
    | None
) = None
trace_index_commands: Callable[[object, bytes, bytes, bytes, int, int], list[tuple[bytes, int]] | None] | None = None
add_to_traces: Callable[[dict[str, Any], object, bytes, _WireBatch, int | None], list[Any]] | None = None
traces_take: Callable[[dict[str, Any], _WireBatch, int | None], int] | None = None
newest_spans: Callable[[list[list[Any]], int], list[Any] | None] | None = None
#: ``zlib.crc32`` by ``crc32fast`` (native/src/checksum.rs).
crc32: Callable[[Any, int], int] | None = None
#: ``TraceIndex._oldest`` in one pass over the index (native/src/traces.rs).
oldest_traces: Callable[[Iterable[Any], int, _WireBatch], tuple[int, int] | None] | None = None
match_spans: (
    Callable[[list[Any], str | None, str | None, str | None, Sequence[tuple[str, str]]], bool | None] | None
) = None
prepare_spans: (
    Callable[
        [object, int, int, dict[str, dict[str | None, Any]] | None, float, object, list[str]],
        tuple[list[int], list[int]] | None,
    ]
    | None
) = None
decode_batch: Callable[..., _WireBatch | None] | None = None
#: ``encode_wire`` and ``decode_batch`` of it in one pass over the spans' slots (native/src/wire.rs).
compile_spans: Callable[..., tuple[bytes, _WireBatch] | None] | None = None
#: A ``POST /spans`` body to ``compile_spans``' result for its prepared spans, in one pass over its bytes
#: (native/src/json_batch.rs).
compile_json: Callable[..., tuple[bytes, _WireBatch] | None] | None = None
untracked_zeros: Callable[[int], list[int]] | None = None
untrack_state: Callable[[object], int] | None = None

if not DISABLED:
    try:
        from tokentrace import _native
    except ImportError:
        pass
    else:
        AggregateKernel = _native.AggregateKernel
        BucketKernel = _native.BucketKernel
        Backlog = _native.Backlog
        check_span = _native.check_span
        compiled_post_init = _native.compiled_post_init
        register_span = _native.register_span
        span_field = _native.span_field
        canonical_ms = _native.canonical_ms
        stamp = _native.stamp
        trace_index_commands = _native.trace_index_commands
        route_spans = _native.route_spans
        decode_batch = _native.decode_batch
        compile_spans = _native.compile_spans
        compile_json = _native.compile_json
        prepare_spans = _native.prepare_spans
        add_to_traces = _native.add_to_traces
        traces_take = _native.traces_take
        match_spans = _native.match_spans
        newest_spans = _native.newest_spans
        crc32 = _native.crc32
        oldest_traces = _native.oldest_traces
        untracked_zeros = _native.untracked_zeros
        untrack_state = _native.untrack_state

#: Whether the compiled hot path is in use.
AVAILABLE = AggregateKernel is not None
