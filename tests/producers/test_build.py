"""The hot-path helpers give exactly what the slow, validating paths give."""

from __future__ import annotations

import os
import uuid
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokentrace.core.codec import decode_json_spans, encode_json
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms
from tokentrace.producers.build import check_attributes, check_number, check_tokens, make_span
from tokentrace.producers.clock import stamp
from tokentrace.producers.ids import new_id

EPOCH_MS = st.integers(min_value=0, max_value=253_402_300_799_998)  # up to 9999-12-31
START_MS = st.integers(min_value=0, max_value=4_102_444_800_000)  # up to 2100, so start + latency stays valid
tokens = st.none() | st.integers(min_value=0, max_value=10**9)
numbers = st.none() | st.integers(min_value=0, max_value=10**6) | st.floats(min_value=0, max_value=1e6)
attribute_values = st.text(max_size=5) | st.integers(-5, 5) | st.floats(-1, 1) | st.booleans()
attributes = st.dictionaries(st.sampled_from(["a", "b"]), attribute_values, max_size=2)
scores = st.none() | st.integers(0, 1) | st.floats(0, 1)


def test_ids_are_uuid4_and_unique() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:500]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


def test_ids_differ_in_a_forked_child() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id and leave at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert uuid.UUID(child_id).version == 4
    assert child_id != new_id()


@given(EPOCH_MS)
def test_stamp_is_format_ms(epoch_ms: int) -> None:
    assert stamp(epoch_ms) == format_ms(epoch_ms)
    assert stamp(epoch_ms + 1) == format_ms(epoch_ms + 1)  # the cached prefix is reused or renewed


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=tokens,
    comp=tokens,
    cost=numbers,
    latency=numbers,
    attrs=attributes,
    score=scores,
    parent=st.none() | st.just("p"),
    status=st.sampled_from(["ok", "error", "timeout"]),
    start=st.none() | START_MS,
)
def test_make_span_equals_span_constructor(
    prompt: int | None,
    comp: int | None,
    cost: float | None,
    latency: float | None,
    attrs: dict[str, Any],
    score: float | None,
    parent: str | None,
    status: str,
    start: int | None,
) -> None:
    if prompt is None and comp is None:
        prompt = 0
    if score is not None:
        attrs = {**attrs, "eval.score": score}
    started = None if start is None else format_ms(start)
    ended = None if start is None or latency is None else format_ms(start + round(latency))
    fields: dict[str, Any] = {
        "trace_id": "t",
        "span_id": "s",
        "parent_span_id": parent,
        "name": "n",
        "model": "m",
        "provider": "p",
        "prompt_tokens": check_tokens(prompt, "prompt_tokens"),
        "comp_tokens": check_tokens(comp, "comp_tokens"),
        "total_tokens": None,
        "cost_usd": check_number(cost, "cost_usd"),
        "latency_ms": check_number(latency, "latency_ms"),
        "status": status,
        "error": None if status == "ok" else "boom",
        "caller": "c",
        "started_at": started,
        "ended_at": ended,
        "attributes": check_attributes(attrs),
    }
    fast = make_span(**fields)
    slow = Span(**fields)
    assert fast == slow
    assert encode_json(fast) == encode_json(slow)
    assert decode_json_spans(encode_json(fast)) == [slow]


def test_make_span_derives_latency_from_timestamps_like_span() -> None:
    fields: dict[str, Any] = dict(
        trace_id="t",
        span_id="s",
        parent_span_id=None,
        name="n",
        model="m",
        provider="",
        prompt_tokens=1,
        comp_tokens=None,
        total_tokens=None,
        cost_usd=None,
        latency_ms=None,
        status="ok",
        error=None,
        caller="",
        started_at=format_ms(1000),
        ended_at=format_ms(1250),
        attributes={},
    )
    assert make_span(**fields) == Span(**fields)
    assert make_span(**fields).latency_ms == 250


def test_template_is_not_shared() -> None:
    a = make_span("t", "a", None, "n", "m", "", 1, None, None, None, None, "ok", None, "", None, None, {"k": 1})
    b = make_span("t", "b", None, "n", "m", "", 2, None, None, None, None, "ok", None, "", None, None, {})
    assert a.attributes == {"k": 1} and b.attributes == {}
    assert msgspec.json.decode(encode_json(a))["span_id"] == "a"
