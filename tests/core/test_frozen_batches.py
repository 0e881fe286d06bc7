"""Compiled batches' spans queued for frozen buckets and counted into their bytes (``frozen.Backlog``,
native/src/frozen.rs): the bucket ``frozen.add_many`` makes of the same spans, in the order ``Timeline.add_many``
counts them."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tokentrace.core import frozen, native
from tokentrace.core.buckets import SEP, BucketState, Caps
from tokentrace.core.codec import encode_wire
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span
from tokentrace.core.timefmt import format_ms
from tokentrace.core.timeline import DAY_MS, HOUR_MS

pytestmark = pytest.mark.skipif(native.decode_batch is None, reason="batches exist only compiled")

HOUR = 1_780_002_000_000 - 1_780_002_000_000 % 3_600_000
MINUTE = 60_000
_encode = msgspec.msgpack.encode

spans = st.builds(
    lambda model, caller, prompt, comp, latency, cost, status, score, extra, minute: Span(
        model=model,
        provider="p",
        caller=caller,
        prompt_tokens=prompt,
        comp_tokens=comp,
        latency_ms=latency,
        cost_usd=cost,
        status=status,
        started_at=format_ms(HOUR + minute * MINUTE + 7),
        attributes=extra | ({"eval.score": score} if score is not None else {}),
    ),
    st.sampled_from(["m1", "m2", "m3", "gpt-4o"]),
    st.sampled_from(["", "svc-a", "svc-b"]),
    st.one_of(st.none(), st.integers(0, 300_000)),
    st.integers(0, 4_000),
    st.one_of(st.integers(0, 60_000), st.floats(0, 60_000)),
    st.one_of(st.none(), st.floats(0, 2), st.integers(0, 3)),
    st.sampled_from(["ok", "ok", "error", "timeout"]),
    st.one_of(st.none(), st.floats(-1, 1), st.just(0.0), st.integers(-2, 2)),
    st.dictionaries(
        st.sampled_from(["tier", "flag", "user", "route"]),
        st.one_of(st.integers(-3, 3), st.booleans(), st.sampled_from(["a", "b", "c", "__overflow__"]), st.floats(0, 1)),
        max_size=3,
    ),
    st.integers(0, 3),
)
capped = st.sampled_from(
    [Caps(), Caps(max_attribute_keys=1, max_attribute_values=2), Caps(2, 1), Caps(max_series=1), Caps(2, 1, 2)]
)


def compiled(batch: list[Span]) -> object:
    """The batch as the embedded store compiles it, or None where the compiled decoder leaves it to Python."""
    for span in batch:
        span.stamp(HOUR)
    low, high = -(2**63), 2**63 - 1
    bounds = (MAX_TOKENS, MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE)
    assert native.decode_batch is not None
    return native.decode_batch(encode_wire(batch), low, high, MINUTE, low, False, *bounds, SEP, live=True)


def minute_order(batch: list[Span]) -> list[Span]:
    """The spans as ``Timeline.add_many`` counts them: minute by minute (first seen first), each in order."""
    minutes: dict[int, list[Span]] = {}
    for span in batch:
        minutes.setdefault(span.stamp(HOUR) // MINUTE, []).append(span)
    return [span for members in minutes.values() for span in members]


def _decoded(raw: bytes) -> bytes:
    """``raw`` decoded and encoded again: a sketch's min or max written as an int (a live bucket keeps an int
    latency as given) decodes as a float, as after any restart, and aggregates no span reached stay as their
    bytes in a frozen bucket, so only a decoded comparison is fair. Dict order is compared with the rest."""
    return _encode(frozen.thaw(msgspec.Raw(raw)))


KEY = (-1, HOUR)


@given(st.lists(spans, max_size=30), st.lists(st.lists(spans, min_size=1, max_size=20), min_size=1, max_size=3), capped)
@settings(max_examples=300, deadline=None)
def test_queued_batches_count_into_the_bytes_as_their_spans_count_into_the_bucket(
    before: list[Span], late: list[list[Span]], caps: Caps
) -> None:
    """Caps, overflow counts and dict order included: each batch's spans minute by minute, batches in order."""
    state = BucketState()
    for span in before:
        state.add(span, caps)
    raw = frozen.freeze(state)
    batches = [compiled(batch) for batch in late]
    assume(all(batch is not None for batch in batches))
    backlog = frozen.Backlog(caps, {}, HOUR_MS, DAY_MS)
    for batch in batches:
        backlog.add(batch, [(*KEY, [start for start, _ in batch.buckets()])])  # type: ignore[attr-defined]
    assert backlog.queued(KEY) == sum(map(len, late))
    counted = backlog.count_into(KEY, raw)
    assert backlog.queued(KEY) == 0
    reference = frozen.add_many(raw, [span for batch in late for span in minute_order(batch)], caps)
    assert _decoded(counted) == _decoded(reference)


def test_a_bucket_made_frozen_by_a_back_fill_counts_what_reaches_it() -> None:
    batch = compiled([Span(model="m", latency_ms=12, prompt_tokens=10, started_at=format_ms(HOUR))])
    backlog = frozen.Backlog(Caps(), {}, HOUR_MS, DAY_MS)
    backlog.add(batch, [(*KEY, [HOUR])])  # type: ignore[arg-type]
    state = frozen.thaw(backlog.count_into(KEY, frozen.EMPTY))
    (aggregate,) = state.series.values()
    assert (aggregate.count, aggregate.prompt_tokens, aggregate.latency_sum_us) == (1, 10, 12_000)
    assert aggregate.latency.min == 12


def test_a_bucket_an_older_build_wrote_is_rewritten_then_counted() -> None:
    """An aggregate of 16 fields (one fewer: msgspec fills the default) is not read by the compiled code: the
    bucket is decoded and encoded by this build first, and the spans still counted once."""
    state = BucketState()
    state.add(Span(model="m", prompt_tokens=10, latency_ms=5), Caps())
    fields = msgspec.msgpack.decode(_encode(state))
    fields["series"] = {key: value[:16] for key, value in fields["series"].items()}
    raw = msgspec.Raw(_encode(fields))
    batch = compiled([Span(model="m", prompt_tokens=10, latency_ms=5, started_at=format_ms(HOUR))])
    backlog = frozen.Backlog(Caps(), {}, HOUR_MS, DAY_MS)
    backlog.add(batch, [(*KEY, [HOUR])])  # type: ignore[arg-type]
    (aggregate,) = frozen.thaw(backlog.count_into(KEY, raw)).series.values()
    assert (aggregate.count, aggregate.prompt_tokens) == (2, 20)


def test_a_sum_beyond_64_bits_raises_as_msgspec_would_and_keeps_the_spans_queued() -> None:
    state = BucketState()
    state.add(Span(model="m", prompt_tokens=10, latency_ms=5), Caps())
    (aggregate,) = state.series.values()
    aggregate.prompt_tokens = 2**64 - 1
    raw = frozen.freeze(state)
    batch = compiled([Span(model="m", prompt_tokens=10, latency_ms=5, started_at=format_ms(HOUR))])
    backlog = frozen.Backlog(Caps(), {}, HOUR_MS, DAY_MS)
    backlog.add(batch, [(*KEY, [HOUR])])  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        backlog.count_into(KEY, raw)
    assert backlog.queued(KEY) == 1
    backlog.discard(KEY)
    assert backlog.queued(KEY) == 0


def test_queueing_counts_the_spans_in_the_versions_and_the_backlog_knows_what_waits_where() -> None:
    """Each bucket's spans bump its key, its hour's and its day's versions (``Timeline._counted`` of each);
    ``fullest`` lists the buckets the most first; a count or a discard takes a bucket's spans off the total."""
    other = (-2, HOUR + 5 * MINUTE)
    batch = compiled(
        [
            Span(model="m", latency_ms=5, prompt_tokens=3, started_at=format_ms(HOUR + minute * MINUTE + 7))
            for minute in (0, 0, 5, 1, 5, 0)
        ]
    )
    assert batch is not None
    versions: dict[tuple[int, int], int] = {(HOUR_MS, HOUR): 4}
    backlog = frozen.Backlog(Caps(), versions, HOUR_MS, DAY_MS)
    plan = [(*KEY, [HOUR, HOUR + MINUTE]), (*other, [HOUR + 5 * MINUTE])]
    assert backlog.add(batch, plan) == 6  # type: ignore[arg-type]
    day = HOUR - HOUR % DAY_MS
    assert versions == {(HOUR_MS, HOUR): 4 + 6, KEY: 4, other: 2, (DAY_MS, day): 6}
    assert (len(backlog), backlog.queued(KEY), backlog.queued(other)) == (6, 4, 2)
    assert backlog.fullest() == [(4, *KEY), (2, *other)]
    assert [backlog.fullest(n) for n in (0, 1, 4, 5, 7)] == [
        [],
        [(4, *KEY)],
        [(4, *KEY)],
        *[[(4, *KEY), (2, *other)]] * 2,
    ]
    backlog.count_into(KEY, frozen.EMPTY)
    assert (len(backlog), backlog.fullest()) == (2, [(2, *other)])
    assert backlog.discard(other) == 2
    assert (len(backlog), backlog.fullest()) == (0, [])


def test_the_backlog_keeps_a_span_in_well_under_200_bytes_and_each_text_once() -> None:
    """Rows of 72 bytes and text ids, not copies of the spans' texts (an hour's rows grow by doubling)."""
    batch = compiled(
        [
            Span(
                model="a-model-with-a-rather-long-name",
                provider="provider",
                caller=f"caller-{n % 3}",
                latency_ms=5,
                prompt_tokens=3,
                attributes={"route": f"/a/long/route/{n % 4}", "eval.score": 0.5},
                started_at=format_ms(HOUR + (n % 60) * MINUTE + 7),
            )
            for n in range(1000)
        ]
    )
    assert batch is not None
    backlog = frozen.Backlog(Caps(), {}, HOUR_MS, DAY_MS)
    backlog.add_whole(batch, *KEY[:1], HOUR_MS, [HOUR])  # type: ignore[arg-type]
    assert len(backlog) == 1000
    assert backlog.memory() < 200 * 1000
    backlog.clear()
    assert backlog.memory() < 1000  # the texts go with the rows


def test_texts_that_never_repeat_go_with_their_bucket_s_rows() -> None:
    """A back-fill whose attribute values are all different (request ids): the backlog holds the waiting spans'
    texts only, none of the buckets counted before (another bucket's span waits all along); its tables go once
    nothing waits."""
    backlog = frozen.Backlog(Caps(), {}, HOUR_MS, DAY_MS)
    counted = []
    waiting = compiled([Span(model="m", latency_ms=5, prompt_tokens=3, started_at=format_ms(HOUR + 7))])
    assert waiting is not None
    backlog.add(waiting, [(KEY[0], HOUR - HOUR_MS, [HOUR])])  # type: ignore[arg-type]
    for round_ in range(3):
        batch = compiled(
            [
                Span(
                    model="m",
                    latency_ms=5,
                    prompt_tokens=3,
                    attributes={"request": f"req-{round_}-{n:06d}-{'x' * 40}"},
                    started_at=format_ms(HOUR + (n % 60) * MINUTE + 7),
                )
                for n in range(1000)
            ]
        )
        assert batch is not None
        backlog.add_whole(batch, *KEY[:1], HOUR_MS, [HOUR])  # type: ignore[arg-type]
        assert backlog.memory() < 300 * 1000
        backlog.count_into(KEY, frozen.EMPTY)
        assert len(backlog) == 1
        counted.append(backlog.memory())
    assert max(counted) < 100 * 1000  # a round's texts are ~70 kB: none stay
    backlog.discard((KEY[0], HOUR - HOUR_MS))
    assert len(backlog) == 0 and backlog.memory() < 2000
