"""Span validation and stamping against the code as it was before the hot-path work (the oracle below).

The fast paths (int token counts, printable names, timestamps already normalised, remembered parses)
must accept, normalise and reject exactly what the original checks did, with the same messages.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core.span import EVAL_SCORE, Span, Status, span_time_ms
from tokentrace.core.timefmt import format_ms

MAX_TOKENS = 10**12
MAX_COST_USD = 10**6
MAX_LATENCY_MS = 10**10
MAX_SCORE = 10**6
LAST_MS = 253_402_300_799_999
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------- the oracle: the original code, no caches
def ref_parse(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}, expected e.g. 2026-03-15T14:23:01.441Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.replace(microsecond=0).timestamp()) * 1000 + parsed.microsecond // 1000


def ref_format(epoch_ms: int) -> str:
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def ref_whole_tokens(value: int | float | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{field} must be a whole number, got {value!r}")
        value = int(value)
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"{field} must be between 0 and {MAX_TOKENS}, got {value!r}")
    return value


def ref_bounded(value: int | float | None, field: str, high: float) -> None:
    if value is not None and not 0 <= value <= high:
        raise ValueError(f"{field} must be a number between 0 and {high:g}, got {value!r}")


def ref_timestamp(value: str | None, field: str) -> tuple[str | None, int | None]:
    if value is None:
        return None, None
    try:
        millis = ref_parse(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    if not 0 <= millis <= LAST_MS:
        raise ValueError(f"{field}: {value!r} is outside 1970-01-01 .. 9999-12-31")
    return ref_format(millis), millis


class RefSpan(msgspec.Struct, kw_only=True):
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str | None = None
    name: str = ""
    model: str
    provider: str = ""
    prompt_tokens: int | float | None = None
    comp_tokens: int | float | None = None
    total_tokens: int | float | None = None
    cost_usd: int | float | None = None
    latency_ms: int | float | None = None
    status: Status = "ok"
    error: str | None = None
    caller: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    attributes: dict[str, str | int | float | bool] = {}

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a non-empty string")
        for field, text in (("model", self.model), ("provider", self.provider), ("caller", self.caller)):
            if CONTROL.search(text):
                raise ValueError(f"{field} must not contain control characters, got {text!r}")
        prompt = ref_whole_tokens(self.prompt_tokens, "prompt_tokens")
        comp = ref_whole_tokens(self.comp_tokens, "comp_tokens")
        total = ref_whole_tokens(self.total_tokens, "total_tokens")
        if prompt is None and comp is None and total is None:
            raise ValueError("at least one token count is required (prompt_tokens, comp_tokens or total_tokens)")
        if total is None:
            total = (prompt or 0) + (comp or 0)
        self.prompt_tokens, self.comp_tokens, self.total_tokens = prompt, comp, total
        ref_bounded(self.cost_usd, "cost_usd", MAX_COST_USD)
        ref_bounded(self.latency_ms, "latency_ms", MAX_LATENCY_MS)
        self.started_at, started = ref_timestamp(self.started_at, "started_at")
        self.ended_at, ended = ref_timestamp(self.ended_at, "ended_at")
        if started is not None and ended is not None:
            if ended < started:
                raise ValueError("ended_at is before started_at")
            if self.latency_ms is None:
                self.latency_ms = ended - started
                ref_bounded(self.latency_ms, "latency_ms", MAX_LATENCY_MS)
        score = self.attributes.get(EVAL_SCORE)
        if score is not None and (isinstance(score, (bool, str)) or not -MAX_SCORE <= score <= MAX_SCORE):
            raise ValueError(
                f"attributes.{EVAL_SCORE} must be a number between -{MAX_SCORE} and {MAX_SCORE}, got {score!r}"
            )

    def stamp(self, arrival_ms: int) -> None:
        if self.started_at is None:
            if self.ended_at is not None and self.latency_ms is not None:
                self.started_at = ref_format(max(0, ref_parse(self.ended_at) - round(self.latency_ms)))
            else:
                self.started_at = ref_format(arrival_ms)
        if self.ended_at is None:
            self.ended_at = ref_format(min(LAST_MS, ref_parse(self.started_at) + round(self.latency_ms or 0)))


# ---------------------------------------------------------------- hostile spans
NOW = 1_780_000_000_123
#: Each field: usually a valid value (so that spans get through to the later checks), now and then not.
good_names = st.sampled_from(["gpt-4o", "claude", "x\u00a0y", "line\u2028sep", "ü", "svc"])
bad_names = st.one_of(st.sampled_from(["", "a\u001fb", "p\n", "\x7f", "tab\tbed"]), st.text(max_size=6))
good_counts = st.one_of(st.none(), st.integers(0, 10**6), st.sampled_from([0, MAX_TOKENS, 3.0, 0.0]))
bad_counts = st.one_of(
    st.integers(-5, -1),
    st.sampled_from([MAX_TOKENS + 1, 2**64, 2.5, 1e300, -0.0]),
    st.floats(-10, 1e13, allow_nan=False, allow_infinity=False),
)
good_amounts = st.one_of(
    st.none(), st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False), st.sampled_from([10**6, 10**10])
)
bad_amounts = st.one_of(
    st.integers(-3, -1), st.sampled_from([1e308, 10**10 + 1, 10**11]), st.floats(-1, 1e11, allow_nan=False)
)


def _variants(ms: int) -> list[str]:
    text = ref_format(ms)
    return [
        text,
        text,
        text,
        text[:19] + "Z",
        text[:23] + "+02:00",
        text.replace("T", " "),
        text[:23],
        text[:19] + ".123456Z",
        text.lower(),
        text[:20] + "4x1Z",
        text[:20] + "\u0661\u0662\u0663Z",
    ]


instants = st.one_of(
    st.integers(NOW - 10**10, NOW + 10**9),
    st.sampled_from([0, -1, LAST_MS, LAST_MS + 1, -62135596800000, 253402300800000]),
)
good_timestamps = st.one_of(st.none(), st.builds(lambda ms, i: _variants(ms)[i], instants, st.integers(0, 7)))
bad_timestamps = st.one_of(
    st.builds(lambda ms, i: _variants(ms)[i], instants, st.integers(8, 10)),
    st.sampled_from(["yesterday", "", "0001-10-01T00:00:00Z", "0999-12-31T23:59:59+14:00", "2026-02-30T00:00:00.000Z"]),
)
scores = st.one_of(
    st.floats(-2e6, 2e6, allow_nan=False),
    st.integers(-(10**7), 10**7),
    st.booleans(),
    st.sampled_from(["0.5", 1e308, MAX_SCORE, -MAX_SCORE]),
)


def sometimes(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten: most spans get through to the later checks and to stamping."""
    return st.integers(0, 9).flatmap(lambda roll: bad if roll == 0 else good)


@st.composite
def raw_spans(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {"model": draw(sometimes(good_names, bad_names)), "trace_id": "t", "span_id": "s"}
    for field in ("provider", "caller"):
        if draw(st.booleans()):
            raw[field] = draw(sometimes(good_names, bad_names))
    for field in ("prompt_tokens", "comp_tokens", "total_tokens"):
        raw[field] = draw(sometimes(good_counts, bad_counts))
    for field in ("cost_usd", "latency_ms"):
        raw[field] = draw(sometimes(good_amounts, bad_amounts))
    for field in ("started_at", "ended_at"):
        raw[field] = draw(sometimes(good_timestamps, bad_timestamps))
    raw["status"] = draw(sometimes(st.sampled_from(["ok", "error", "timeout"]), st.just("bad")))
    attributes = draw(
        st.dictionaries(st.sampled_from(["workflow", "tier"]), st.sampled_from(["a", 1, True]), max_size=2)
    )
    if draw(st.booleans()):
        attributes[EVAL_SCORE] = draw(scores)
    raw["attributes"] = attributes
    return raw


_span_decoder = msgspec.json.Decoder(Span)
_ref_decoder = msgspec.json.Decoder(RefSpan)


def decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> tuple[str, Any]:
    try:
        span = decoder.decode(body)
    except msgspec.ValidationError as exc:
        return "rejected", str(exc)
    return "accepted", msgspec.to_builtins(span)


@given(raw_spans())
@settings(max_examples=600, deadline=None)
def test_validation_matches_the_original(raw: dict[str, Any]) -> None:
    body = msgspec.json.encode(raw)
    assert decode(_span_decoder, body) == decode(_ref_decoder, body)


@given(raw_spans(), instants)
@settings(max_examples=600, deadline=None)
def test_stamp_matches_the_original(raw: dict[str, Any], arrival: int) -> None:
    body = msgspec.json.encode(raw)
    try:
        span, ref = _span_decoder.decode(body), _ref_decoder.decode(body)
    except msgspec.ValidationError:
        return
    try:
        at: int | str = span.stamp(arrival)
    except ValueError as exc:
        at = str(exc)
    try:
        ref.stamp(arrival)
        ref_at: int | str = ref_parse(ref.started_at or "")
    except ValueError as exc:
        ref_at = str(exc)
    assert (span.started_at, span.ended_at, at) == (ref.started_at, ref.ended_at, ref_at)
    if isinstance(at, int):
        assert span_time_ms(span) == at


def test_a_normalised_timestamp_is_kept_as_it_is() -> None:
    text = format_ms(NOW)
    span = Span(model="m", prompt_tokens=1, started_at=text, ended_at=text)
    assert span.started_at is text and span.ended_at is text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model": "m", "prompt_tokens": 1.5}, "prompt_tokens must be a whole number, got 1.5"),
        ({"model": "m", "comp_tokens": -1}, "comp_tokens must be between 0 and 1000000000000, got -1"),
        ({"model": "a\nb", "total_tokens": 1}, "model must not contain control characters, got 'a\\nb'"),
        ({"model": "m", "total_tokens": 1, "cost_usd": -1}, "cost_usd must be a number between 0 and 1e+06, got -1"),
        ({"model": "m", "total_tokens": 1, "started_at": "2026-03-15T14:23:01.4x1Z"}, "started_at: invalid RFC 3339"),
    ],
)
def test_messages_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        _span_decoder.decode(msgspec.json.encode(raw))


def test_spans_are_not_tracked_by_the_cycle_collector() -> None:
    """Decoded spans (JSON and the Kafka wire), built ones and their attribute dicts stay out of the
    collector's generations: a worker decodes tens of thousands a second (bench/apply_instructions.py)."""
    import gc

    from tokentrace.core.codec import decode_json_spans, decode_wire, encode_wire

    body = b'{"model": "m", "prompt_tokens": 1, "attributes": {"workflow": "chat", "eval.score": 0.5}}'
    decoded = decode_json_spans(body)[0]
    from_wire = decode_wire(encode_wire([decoded]))[0]
    built = Span(model="m", prompt_tokens=1, attributes={"workflow": "chat"})
    for span in (decoded, from_wire, built):
        assert not gc.is_tracked(span)
        assert not gc.is_tracked(span.attributes)
