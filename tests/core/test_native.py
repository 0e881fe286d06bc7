"""The compiled hot path (``tokentrace._native``) against the Python code it mirrors.

Each native function must give the Python result (compared on encoded bytes: dict order, int vs float) or
decline having changed nothing. ``TOKENTRACE_REQUIRE_NATIVE=1`` (set by scripts/test) makes a missing build a
failure instead of a skip, so the suite cannot silently test only the Python path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_batch_add import batches, caps, reference_aggregate_add, reference_bucket_add
from tokentrace.core import aggregate as aggregate_module
from tokentrace.core import buckets as buckets_module
from tokentrace.core import native, timefmt
from tokentrace.core import span as span_module
from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import BucketState, Caps
from tokentrace.core.codec import decode_wire
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span

_encode = msgspec.msgpack.Encoder().encode
REQUIRED = os.environ.get("TOKENTRACE_REQUIRE_NATIVE") == "1"
ROOT = Path(__file__).resolve().parents[2]


def test_the_compiled_module_is_in_use_where_required() -> None:
    if not REQUIRED:
        pytest.skip("TOKENTRACE_REQUIRE_NATIVE is not set")
    assert not native.DISABLED, "TOKENTRACE_NATIVE=0 is set while TOKENTRACE_REQUIRE_NATIVE=1"
    assert native.AVAILABLE, "tokentrace._native is not built: is cargo on PATH when pip installs tokentrace?"


needs_native = pytest.mark.skipif(not native.AVAILABLE, reason="tokentrace._native is not built")
pytestmark = [needs_native] if not REQUIRED else []


@contextmanager
def python_path() -> Iterator[None]:
    """Every native hook off: the Python code runs."""
    with (
        mock.patch.object(span_module, "_check_span", None),
        mock.patch.object(aggregate_module, "_KERNEL", None),
        mock.patch.object(buckets_module, "_KERNEL", None),
        mock.patch.object(span_module, "_stamp", None),
        mock.patch.object(timefmt, "_canonical_ms", None),
    ):
        yield


# ----------------------------------------------------------------- timestamps
instants = st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))


@given(instants)
def test_canonical_ms_reads_every_normalised_timestamp_as_python_does(instant: datetime) -> None:
    text = instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"
    with python_path():
        expected = timefmt.parse_rfc3339_ms(text)
    native_ms = native.canonical_ms(text) if native.canonical_ms else None
    assert native_ms == (expected if expected >= 0 else None)
    assert timefmt.parse_rfc3339_ms(text) == expected


digit_or_not = st.sampled_from("0123456789x٣")


@given(st.lists(digit_or_not, min_size=17, max_size=17), st.sampled_from(["T", "t", " "]), st.sampled_from("Zz+"))
@settings(max_examples=500)
def test_canonical_ms_refuses_what_python_refuses(digits: list[str], separator: str, zone: str) -> None:
    """Any 24-character candidate, valid or not (Feb 30, hour 24, non-ASCII digits): same answer or None."""
    d = "".join(digits)
    text = f"{d[0:4]}-{d[4:6]}-{d[6:8]}{separator}{d[8:10]}:{d[10:12]}:{d[12:14]}.{d[14:17]}{zone}"
    assert native.canonical_ms is not None
    got = native.canonical_ms(text)
    with python_path():
        try:
            expected: int | None = timefmt.parse_rfc3339_ms(text)
        except ValueError:
            expected = None
    if got is not None:
        assert got == expected
    with python_path():
        try:
            python_result: Any = timefmt.normalize_rfc3339(text)
        except ValueError as exc:
            python_result = str(exc)
    try:
        native_result: Any = timefmt.normalize_rfc3339(text)
    except ValueError as exc:
        native_result = str(exc)
    assert native_result == python_result


hours = st.sampled_from(["2024-02-29T23", "2023-02-28T00", "2023-02-29T12", "1970-01-01T00", "2024-13-01T05"])


@given(st.lists(st.tuples(hours, st.lists(digit_or_not, min_size=7, max_size=7)), min_size=1, max_size=30))
def test_canonical_ms_reads_runs_of_one_hour_as_python_does(texts: list[tuple[str, list[str]]]) -> None:
    """The compiled reader keeps the last hour it read (a batch's spans mostly share theirs): timestamps in a few
    hours, valid and not (Feb 29 of 2023, month 13, minute 60, non-ASCII digits), one after the other."""
    assert native.canonical_ms is not None
    for hour, digits in texts:
        d = "".join(digits)
        text = f"{hour}:{d[0:2]}:{d[2:4]}.{d[4:7]}Z"
        with python_path():
            try:
                expected: int | None = timefmt.parse_rfc3339_ms(text)
            except ValueError:
                expected = None
        assert native.canonical_ms(text) == expected, text


def test_canonical_ms_edges() -> None:
    assert native.canonical_ms is not None
    read = native.canonical_ms
    assert read("1970-01-01T00:00:00.000Z") == 0
    assert read("9999-12-31T23:59:59.999Z") == 253_402_300_799_999
    assert read("2024-02-29T12:00:00.000Z") == timefmt.parse_rfc3339_ms("2024-02-29T12:00:00+00:00")
    for text in ("2023-02-29T00:00:00.000Z", "1969-12-31T23:59:59.999Z", "2024-01-01T00:00:60.000Z", 42, None):
        assert read(text) is None


# ---------------------------------------------------------------- span checks
names = st.one_of(st.sampled_from(["gpt-4o", "claude-3-5-sonnet", "", "mödel", "a\tb", "x\x7f"]), st.text(max_size=4))
token_values = st.one_of(
    st.none(), st.integers(0, MAX_TOKENS), st.sampled_from([-1, MAX_TOKENS + 1, 2.0, 2.5, -0.0, 10**19])
)
numbers = st.one_of(
    st.none(),
    st.integers(0, 10**6),
    st.floats(allow_nan=True),
    st.sampled_from([0, 0.0, MAX_COST_USD, MAX_LATENCY_MS, MAX_LATENCY_MS + 1, -1, 2**60]),
)
timestamps = st.one_of(
    st.none(),
    instants.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"),
    instants.map(lambda d: d.isoformat()),
    st.sampled_from(["2026-02-30T00:00:00.000Z", "nonsense", "2026-11-26T03:00:00Z", "2026-11-26T03:00:00.000+01:00"]),
)
attribute_values = st.one_of(
    st.text(max_size=3),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=True),
    st.booleans(),
    st.sampled_from([2**63, 2**64 - 1, -(2**63), -(2**63) - 1, MAX_SCORE, -MAX_SCORE, MAX_SCORE + 1]),
)
attribute_maps = st.dictionaries(st.sampled_from(["eval.score", "workflow", "n"]), attribute_values, max_size=3)


@st.composite
def span_fields(draw: st.DrawFn) -> dict[str, Any]:
    """A span's fields as a sender might put them on the wire: mostly valid, often not."""
    fields: dict[str, Any] = {
        "trace_id": draw(st.sampled_from(["t1", ""])),
        "span_id": draw(st.sampled_from(["s1", ""])),
        "model": draw(names),
        "provider": draw(names),
        "caller": draw(names),
        "prompt_tokens": draw(token_values),
        "comp_tokens": draw(token_values),
        "total_tokens": draw(token_values),
        "cost_usd": draw(numbers),
        "latency_ms": draw(numbers),
        "status": draw(st.sampled_from(["ok", "error", "timeout"])),
        "started_at": draw(timestamps),
        "ended_at": draw(timestamps),
        "attributes": draw(attribute_maps),
    }
    return {k: v for k, v in fields.items() if v is not None or draw(st.booleans())}


def decode_outcome(payload: bytes) -> tuple[str, Any]:
    try:
        spans = decode_wire(payload)
    except (msgspec.DecodeError, ValueError) as exc:
        return "rejected", str(exc)
    # Generated ids differ by nature: compare whether they were generated, not their values.
    return "accepted", [
        _encode({**msgspec.structs.asdict(s), "trace_id": bool(s.trace_id), "span_id": bool(s.span_id)}) for s in spans
    ]


@given(st.lists(span_fields(), min_size=1, max_size=3))
@settings(max_examples=1000)
def test_decoding_with_the_compiled_check_equals_the_python_checks(fields: list[dict[str, Any]]) -> None:
    try:
        payload = msgspec.msgpack.encode({"v": 1, "spans": fields})
    except OverflowError:  # an int beyond MessagePack's 64 bits cannot be sent at all
        return
    with python_path():
        expected = decode_outcome(payload)
    assert decode_outcome(payload) == expected


def test_the_usual_span_is_passed_by_the_compiled_check() -> None:
    """The fast path is taken (not just declined every time) for the spans the SDK sends."""
    assert native.check_span is not None
    span = Span(
        trace_id="t",
        span_id="s",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=10,
        comp_tokens=5,
        latency_ms=12.5,
        started_at="2026-11-26T03:00:00.000Z",
        ended_at="2026-11-26T03:00:01.500Z",
        attributes={"eval.score": 0.5, "workflow": "x"},
    )
    check = native.check_span
    assert check(span, MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE)
    span.latency_ms, span.total_tokens = None, None
    assert check(span, MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE)
    assert (span.total_tokens, span.latency_ms) == (15, 1500)
    span.trace_id = ""  # ids are generated by the Python code
    assert not check(span, MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE)


# ----------------------------------------------------------------- aggregates
@given(batches, batches)
@settings(max_examples=300)
def test_kernel_add_many_equals_the_python_add_many(first: list[Span], second: list[Span]) -> None:
    assert aggregate_module._KERNEL is not None
    native_agg, python_agg, reference = Aggregate(), Aggregate(), Aggregate()
    for span in first + second:
        reference_aggregate_add(reference, span)
    assert aggregate_module._KERNEL.add_many(native_agg, first)  # the usual spans are never declined
    assert aggregate_module._KERNEL.add_many(native_agg, second)
    with python_path():
        python_agg.add_many(first)
        python_agg.add_many(second)
    assert _encode(native_agg) == _encode(python_agg) == _encode(reference)


@given(batches, batches, caps)
@settings(max_examples=300)
def test_bucket_kernel_equals_the_python_add_many(first: list[Span], second: list[Span], cap: Caps) -> None:
    kernel = buckets_module._KERNEL
    assert kernel is not None
    native_state, python_state, reference = BucketState(), BucketState(), BucketState()
    for span in first + second:
        reference_bucket_add(reference, span, cap)
    for batch in (first, second):
        assert kernel.add_many(native_state, batch, cap.max_attribute_keys, cap.max_attribute_values, cap.max_series)
        with python_path():
            python_state.add_many(batch, cap)
    assert _encode(native_state) == _encode(python_state) == _encode(reference)


def test_bucket_kernel_declines_unusual_values_without_changing_anything() -> None:
    kernel = buckets_module._KERNEL
    assert kernel is not None
    state = BucketState()
    usual = Span(model="m", prompt_tokens=1, attributes={"tier": "a", "n": 3, "flag": True, "x": 0.5})
    assert kernel.add_many(state, [usual], 32, 100, 10_000)
    before = _encode(state)
    for odd in ({"tier": OddFloat(1.0)}, {"tier": ["a"]}, {1: "a"}):
        span = Span(model="m", prompt_tokens=1)
        span.attributes = odd  # type: ignore[assignment]  # past validation, as a careless caller might
        assert not kernel.add_many(state, [usual, span], 32, 100, 10_000)
        assert _encode(state) == before
    assert not kernel.add_many(state, (usual,), 32, 100, 10_000)  # not a list


class OddFloat(float):
    """A float subclass (as numpy's float64 is): the kernel leaves it to Python."""


def test_kernel_declines_unusual_values_without_changing_anything() -> None:
    kernel = aggregate_module._KERNEL
    assert kernel is not None
    usual = Span(model="m", prompt_tokens=3, latency_ms=5.0, cost_usd=0.25)
    odd = Span(model="m", prompt_tokens=3, latency_ms=OddFloat(7.0))
    aggregate = Aggregate()
    kernel.add_many(aggregate, [usual])
    before = _encode(aggregate)
    assert not kernel.add_many(aggregate, [usual, odd])
    assert _encode(aggregate) == before
    assert not kernel.add_many(aggregate, (usual,))  # not a list
    aggregate.add_many([usual, odd])  # the Python code takes it
    reference = Aggregate()
    for span in (usual, usual, odd):
        reference_aggregate_add(reference, span)
    assert aggregate == reference  # (the sketch keeps the OddFloat itself, which msgpack cannot encode)


def test_kernel_keeps_sums_exact_beyond_64_bits() -> None:
    kernel = aggregate_module._KERNEL
    assert kernel is not None
    aggregate = Aggregate(cost_nanos=2**70, prompt_tokens=2**64)
    assert kernel.add_many(aggregate, [Span(model="m", prompt_tokens=MAX_TOKENS, cost_usd=MAX_COST_USD)])
    assert aggregate.cost_nanos == 2**70 + MAX_COST_USD * 10**9
    assert aggregate.prompt_tokens == 2**64 + MAX_TOKENS


@given(
    st.one_of(st.none(), instants.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z")),
    st.one_of(st.none(), st.sampled_from(["2026-11-26T03:00:00.000Z"])),
    st.one_of(
        st.none(), st.integers(0, MAX_LATENCY_MS), st.floats(0, MAX_LATENCY_MS), st.sampled_from([0.5, 1.5, 2.5])
    ),
    st.integers(0, 2**45),
)
@settings(max_examples=500)
def test_stamp_equals_the_python_stamp(started: str | None, ended: str | None, latency: Any, arrival: int) -> None:
    def stamped() -> tuple[int | str, bytes]:
        span = Span(trace_id="t", span_id="s", model="m", prompt_tokens=1, latency_ms=latency)
        span.started_at, span.ended_at = started, ended  # as decoded, without the derived latency
        try:
            at: int | str = span.stamp(arrival)
        except ValueError as exc:
            at = str(exc)
        return at, _encode(span)

    with python_path():
        expected = stamped()
    assert stamped() == expected


def test_timestamps_round_trip_through_both_paths() -> None:
    start = datetime(2026, 11, 26, tzinfo=UTC)
    for step in range(0, 400 * 86400, 7919):
        instant = start + timedelta(seconds=step, milliseconds=step % 1000)
        text = timefmt.format_ms(int(instant.timestamp() * 1000))
        with python_path():
            expected = timefmt.parse_rfc3339_ms(text)
        assert timefmt.parse_rfc3339_ms(text) == expected


def test_the_python_path_passes_the_core_tests_on_its_own() -> None:
    """An install without the compiled module runs the Python code alone: the core's tests pass on it."""
    tests = ["tests/core/test_batch_add.py", "tests/core/test_span.py", "tests/core/test_timefmt.py"]
    env = {**os.environ, "TOKENTRACE_NATIVE": "0", "TOKENTRACE_REQUIRE_NATIVE": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-500:]


def test_every_compiled_name_is_there_without_the_module() -> None:
    """Without the compiled module each name ``native`` exports is None (the Python code runs), never missing: a
    caller's ``native.x is None`` check must not raise AttributeError on an install without Rust."""
    env = {**os.environ, "TOKENTRACE_NATIVE": "0", "TOKENTRACE_REQUIRE_NATIVE": "0"}
    code = "from tokentrace.core import native; print([n for n in native.__all__ if not hasattr(native, n)])"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr
