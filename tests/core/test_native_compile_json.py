"""``compile_body`` (tokentrace/core/ingest.py, native/src/json_batch.rs): a ``POST /spans`` body straight to its
log record and compiled batch, against the Python path it stands in for.

A body it takes must be one the Python path accepts whole (``decode_json_spans``, ``prepare_batch``, the label
caps leaving every span as it is), and it gives what that path then stores: ``encode_wire`` of the prepared
spans byte for byte, and the batch ``compile_spans`` makes of them (same starts, buckets, trace ids and
aggregates). It may decline any body; the usual one (the SDKs' form, priced from rates learnt before, series
admitted) it takes.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.core.test_batch_add import caps
from tests.core.test_native import REQUIRED, span_fields
from tests.core.test_native_compile_spans import counted
from tests.core.test_native_wire import MINUTE, NOW, _usual, extras
from tokentrace.core import native
from tokentrace.core.buckets import SEP, Caps
from tokentrace.core.codec import decode_json_spans, encode_wire
from tokentrace.core.ingest import SpanRejected, compile_body, prepare_batch
from tokentrace.core.labels import LabelCaps
from tokentrace.core.pricing import PriceTable, default_table
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span
from tokentrace.core.timefmt import format_ms

pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.compile_json is None, reason="compiled module not built")]

_LOWEST, _HIGHEST = -(2**63), 2**63 - 1
_SKEW = 5 * MINUTE
_DAY = 24 * 60 * MINUTE
_MAX_SPANS = 6


def _learnt_pricer() -> PriceTable:
    """The bundled price table, with the rates of the models the spans name learnt by ``prepare_batch``."""
    pricer = default_table()
    for model, provider in (("gpt-4o", "openai"), ("gpt-4o", "")):
        span = Span(model=model, provider=provider, prompt_tokens=1, started_at=format_ms(NOW))
        prepare_batch([span], NOW, pricer, 0, _SKEW)  # the compiled pass learns the rates of what it prices
    return pricer


_PRICER = _learnt_pricer()


def _series(span: Any) -> str:
    return f"{span.model}{SEP}{span.provider}{SEP}{span.caller}"


def _python(body: bytes, pricer: PriceTable | None, oldest: int, admitted: set[str]) -> list[Span] | None:
    """The prepared spans if the Python path accepts the body whole and the label caps change none, else None."""
    try:
        spans = decode_json_spans(body)
    except msgspec.DecodeError:  # ValidationError included
        return None
    if len(spans) > _MAX_SPANS:
        return None
    try:
        prepare_batch(spans, NOW, pricer, oldest, _SKEW)
    except (SpanRejected, ValueError):
        return None
    return spans if all(_series(span) in admitted for span in spans) else None


def _encodings(spans: list[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """The body as the SDK writes it (compact, UTF-8), pretty-printed, with ``\\u`` escapes, or as one object."""
    forms = [
        st.just(msgspec.json.encode(spans)),
        st.just(json.dumps(spans, indent=1, ensure_ascii=False).encode()),
        st.just(json.dumps(spans).encode()),  # non-ASCII as \u escapes (surrogate pairs beyond the BMP)
    ]
    if len(spans) == 1:
        forms.append(st.just(msgspec.json.encode(spans[0])))
    return st.one_of(forms)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Mostly usual spans with one field or another varied, now and then a span of any fields."""
    spans: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, _MAX_SPANS + 1))):
        if draw(st.integers(0, 19)) == 0:
            spans.append(draw(span_fields()))
        else:
            spans.append(_usual(i, **draw(extras)))
    try:
        return draw(_encodings(spans))
    except (TypeError, ValueError):  # a value JSON cannot hold (nan with msgspec)
        return msgspec.json.encode([])


def _compile(body: bytes, pricer: PriceTable | None, oldest: int, admitted: set[str]) -> Any:
    return compile_body(body, _MAX_SPANS, admitted, NOW, pricer, oldest, _SKEW, MINUTE)


def _assert_as_python(got: Any, spans: list[Span], cap: Caps) -> None:
    """``got`` is the record and batch the Python path stores for ``spans`` (prepared)."""
    message, batch = got
    assert message == encode_wire(spans)
    # What the store compiles of them: ``compile_spans``, whose batch is ``decode_batch``'s of the message (and
    # which declines an attribute int past 64 signed bits, which ``decode_batch`` reads).
    assert native.decode_batch is not None
    bounds = (MINUTE, _LOWEST, False, MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, SEP)
    expected_batch = native.decode_batch(message, _LOWEST, _HIGHEST, *bounds, live=True)
    assert expected_batch is not None, "compiled a batch decode_batch declines"
    assert len(batch) == len(expected_batch) == len(spans)
    assert batch.starts() == expected_batch.starts()
    assert batch.buckets() == expected_batch.buckets()
    assert batch.trace_ids() == expected_batch.trace_ids()
    assert counted(batch, cap) == counted(expected_batch, cap)


@given(
    bodies(),
    st.sampled_from([None, _PRICER]),
    st.sampled_from([0, NOW - 5 * MINUTE]),
    st.booleans(),
    caps,
)
@settings(max_examples=1500, deadline=None)
def test_a_compiled_body_is_what_the_python_path_stores(
    body: bytes, pricer: PriceTable | None, oldest: int, admit_all: bool, cap: Caps
) -> None:
    try:
        decoded = decode_json_spans(body)
    except msgspec.DecodeError:
        decoded = []
    admitted = {_series(span) for span in decoded} if admit_all else set()
    got = _compile(body, pricer, oldest, admitted)
    spans = _python(body, pricer, oldest, admitted)
    event("compiled" if got is not None else "declined" if spans is None else "declined, Python takes it")
    if got is None:
        return
    assert spans is not None, f"compiled a body the Python path refuses or changes: {body!r}"
    _assert_as_python(got, spans, cap)


_USUAL_VARIATIONS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["", "call", "é\u2028\U0001f600"]),
    "parent_span_id": st.sampled_from([None, "s0"]),
    "error": st.sampled_from([None, "rate limited", "ünïcode", 'quoted "429"\n\tat line 1\\']),
    "status": st.sampled_from(["ok", "error", "timeout"]),
    "started_at": st.sampled_from([None, format_ms(NOW), format_ms(NOW - 29 * _DAY)]),
    "ended_at": st.sampled_from([None, format_ms(NOW + 1500)]),
    "cost_usd": st.one_of(st.none(), st.floats(0, 10), st.integers(0, 10)),
    "latency_ms": st.one_of(st.floats(0, 1e5), st.integers(0, 10**5), st.just(0.5), st.just(2.5)),
    "total_tokens": st.one_of(st.none(), st.integers(0, 10**6)),
    "provider": st.sampled_from(["openai", ""]),
    "attributes": st.dictionaries(
        st.sampled_from(["workflow", "route", "é", "eval.score"]),
        st.one_of(
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=5),
            st.integers(-(2**63), 2**64 - 1),
            st.floats(-MAX_SCORE, MAX_SCORE),
            st.booleans(),
        ),
        max_size=3,
    ),
}
_usual_extras = st.lists(st.sampled_from(sorted(_USUAL_VARIATIONS)), max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({key: _USUAL_VARIATIONS[key] for key in keys})
)


@given(st.lists(_usual_extras, min_size=1, max_size=_MAX_SPANS), st.booleans(), caps)
@settings(max_examples=500, deadline=None)
def test_the_usual_body_is_compiled(variations: list[dict[str, Any]], compact: bool, cap: Caps) -> None:
    spans = [_usual(i, **fields) for i, fields in enumerate(variations)]
    for span in spans:
        score = span["attributes"].get("eval.score")
        if type(score) is not float:  # a score is a number; an int one beyond 2**53 is left to Python
            span["attributes"] = {**span["attributes"], "eval.score": 0.5}
        if span.get("started_at") is None and span.get("ended_at") is not None:
            del span["ended_at"]  # a span without a start but with an end: started from its end, in Python
    body = msgspec.json.encode(spans) if compact else json.dumps(spans, indent=2).encode()
    admitted = {_series(span) for span in decode_json_spans(body)}
    got = _compile(body, _PRICER, NOW - 30 * _DAY, admitted)
    spans_ = _python(body, _PRICER, NOW - 30 * _DAY, admitted)
    assert spans_ is not None
    assert got is not None, f"declined a usual body: {body!r}"
    _assert_as_python(got, spans_, cap)


def test_what_the_python_path_decides_is_declined() -> None:
    usual = _usual(0)
    admitted = {f"gpt-4o{SEP}openai{SEP}chat"}
    assert _compile(msgspec.json.encode([usual]), _PRICER, 0, admitted) is not None
    declined = {
        "a lone surrogate": [{**usual, "name": "\ud800"}],
        "an unknown field": [{**usual, "kind": "llm"}],
        "a series the caps have not seen": [{**usual, "caller": "new"}],
        "a model without learnt rates": [{**usual, "model": "m-unknown", "cost_usd": None}],
        "no trace id": [{**usual, "trace_id": ""}],
        "too many spans": [usual] * (_MAX_SPANS + 1),
        "an empty batch": [],
        "too old": [{**usual, "started_at": format_ms(NOW - 10 * MINUTE)}],
        "in the future": [{**usual, "started_at": format_ms(NOW + 10 * MINUTE)}],
        "no latency to stamp": [{k: v for k, v in usual.items() if k != "latency_ms"}],
        "a float token count": [{**usual, "prompt_tokens": 10.0}],
    }
    for reason, spans in declined.items():
        caps_admitted = admitted | ({f"m-unknown{SEP}openai{SEP}chat"} if "rates" in reason else set())
        body = json.dumps(spans).encode()
        assert _compile(body, _PRICER, NOW - 5 * MINUTE, caps_admitted) is None, reason
    for body in (b"[" + msgspec.json.encode(usual), msgspec.json.encode([usual]) + b" x", b"\xff"):
        assert _compile(body, _PRICER, 0, admitted) is None


def test_labels_admitted_series_is_what_admit_leaves_alone() -> None:
    labels = LabelCaps()
    span = Span(model="m", provider="p", caller="c", prompt_tokens=1)
    assert _series(span) not in labels.admitted_series
    labels.admit([span])
    assert _series(span) in labels.admitted_series
