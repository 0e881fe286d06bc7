"""The worker's replay rules, without Kafka: per-entry offsets make any replay harmless."""

from __future__ import annotations

import random
from itertools import pairwise
from typing import TYPE_CHECKING
from unittest import mock

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core import aggregate as aggregate_module
from tokentrace.core import native
from tokentrace.core.buckets import OVERFLOW, BucketState, Caps
from tokentrace.core.codec import decode_wire, encode_wire
from tokentrace.core.ingest import SpanRejected, prepare_batch
from tokentrace.core.span import Span, span_time_ms
from tokentrace.core.timefmt import format_ms
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, TimelineSettings
from tokentrace.processors.state import Additions, Applied, Applier, compact, expire
from tokentrace.view.keys import encode_span
from tokentrace.view.schema import (
    BucketEntry,
    Entry,
    PartitionMeta,
    RetiredEntry,
    bucket_key,
    decode_entry,
    encode_entry,
    hour_key,
    meta_key,
    parse_key,
    retired_key,
)

if TYPE_CHECKING:
    from tokentrace.view.keys import IndexItem

NOW = 1_780_000_000_000 - 1_780_000_000_000 % MINUTE_MS


def _span(i: int, at: int | None = None, **kw: object) -> Span:
    fields: dict[str, object] = {"model": "gpt-4o", "prompt_tokens": i, "comp_tokens": 1, "cost_usd": 0.001}
    if at is not None:
        fields["started_at"] = format_ms(at)
    fields.update(kw)
    return msgspec.convert(fields, Span)


def _applier() -> Applier:
    return Applier(TimelineSettings(), None, 5 * MINUTE_MS)


def _count(entries: dict[bytes, Entry]) -> tuple[int, int]:
    spans = tokens = 0
    for entry in entries.values():
        if isinstance(entry, BucketEntry):
            for aggregate in entry.state.series.values():
                spans += aggregate.count
                tokens += aggregate.prompt_tokens
    return spans, tokens


def test_keys_round_trip() -> None:
    assert parse_key(bucket_key(3, NOW)) == (3, NOW)
    assert parse_key(meta_key(7)) == (7, None)
    entry = BucketEntry(5, BucketState())
    assert decode_entry(encode_entry(entry)) == entry
    assert decode_entry(encode_entry(PartitionMeta(offset=9, poison=2))) == PartitionMeta(offset=9, poison=2)


def test_replays_in_any_amount_change_nothing() -> None:
    rng = random.Random(7)
    messages = [
        [_span(rng.randrange(1, 100), NOW - rng.randrange(0, 5) * MINUTE_MS) for _ in range(rng.randrange(1, 20))]
        for _ in range(60)
    ]
    payloads = [encode_wire(m) for m in messages]
    once: dict[bytes, Entry] = {}
    for offset, payload in enumerate(payloads):
        _applier().apply(once, 0, offset, NOW, payload)

    # Replay from random earlier points, as after crashes whose changelog got ahead of the commit.
    replayed: dict[bytes, Entry] = {}
    applier = _applier()
    position = 0
    while position < len(payloads):
        end = min(len(payloads), position + rng.randrange(1, 15))
        for offset in range(position, end):
            applier.apply(replayed, 0, offset, NOW, payloads[offset])
        position = max(0, end - rng.randrange(0, 10))
        if end == len(payloads):
            break
    expected = (sum(len(m) for m in messages), sum(int(s.prompt_tokens or 0) for m in messages for s in m))
    assert _count(once) == expected
    assert _count(replayed) == expected
    meta = replayed[meta_key(0)]
    assert isinstance(meta, PartitionMeta)
    assert meta.spans == expected[0] and meta.messages == len(payloads)


def test_a_surviving_older_entry_is_completed_by_replay() -> None:
    """Entries persist independently: an older version of one bucket catches up, the newer one skips."""
    first, second = NOW - MINUTE_MS, NOW
    payloads = [encode_wire([_span(1, first), _span(2, second)]) for _ in range(4)]
    entries: dict[bytes, Entry] = {}
    applier = _applier()
    for offset in range(2):
        applier.apply(entries, 0, offset, NOW, payloads[offset])
    stale = decode_entry(encode_entry(entries[bucket_key(0, first)]))  # as of offset 1
    for offset in range(2, 4):
        applier.apply(entries, 0, offset, NOW, payloads[offset])
    entries[bucket_key(0, first)] = stale  # the changelog kept an older version of this one bucket
    for offset in range(0, 4):  # replay from the committed offset 0
        applier.apply(entries, 0, offset, NOW, payloads[offset])
    assert _count(entries) == (8, 12)


def test_poison_is_counted_once_and_never_stops_the_partition() -> None:
    entries: dict[bytes, Entry] = {}
    applier = _applier()
    good = encode_wire([_span(1, NOW)])
    bad_version = msgspec.msgpack.encode({"v": 99, "spans": []})
    bad_schema = msgspec.msgpack.encode({"v": 1, "spans": [{"model": "x"}]})
    stream = [good, b"\xc1not msgpack", bad_version, good, bad_schema, good]
    for _ in range(2):  # the second pass is a replay
        results = [applier.apply(entries, 2, offset, NOW, p) for offset, p in enumerate(stream)]
    assert [r.poison is not None for r in results] == [False, True, True, False, True, False]
    assert "99" in (results[2].poison or "")
    meta = entries[meta_key(2)]
    assert isinstance(meta, PartitionMeta)
    assert (meta.poison, meta.spans, meta.messages) == (3, 3, 6)
    assert _count(entries) == (3, 3)


def test_decisions_depend_on_the_message_not_the_clock() -> None:
    """Stamping, bounds and pricing use the message timestamp, so a replay decides identically."""
    entries: dict[bytes, Entry] = {}
    applier = _applier()
    unstamped = _span(1)
    future = _span(1, NOW + 10 * MINUTE_MS)
    old = _span(1, NOW - 40 * 86_400_000)
    applied = applier.apply(entries, 0, 0, NOW + 5, encode_wire([unstamped, future, old]))
    assert [s.started_at for s, _ in applied.spans] == [format_ms(NOW + 5)]
    meta = entries[meta_key(0)]
    assert isinstance(meta, PartitionMeta)
    assert (meta.spans, meta.future, meta.too_old) == (1, 1, 1)
    assert bucket_key(0, NOW) in entries


def _short_retention() -> Applier:
    return Applier(TimelineSettings(fine_retention_ms=HOUR_MS, retention_ms=2 * HOUR_MS), None, 5 * MINUTE_MS)


def test_expire_folds_old_buckets_into_retired_then_deletes_them() -> None:
    applier = _short_retention()
    entries: dict[bytes, Entry] = {}
    old, recent = NOW - 3 * HOUR_MS, NOW - 10 * MINUTE_MS
    applier.apply(entries, 1, 0, old, encode_wire([_span(1, old), _span(2, old + MINUTE_MS)]))
    applier.apply(entries, 1, 1, NOW, encode_wire([_span(4, recent)]))
    horizon = applier.oldest_allowed_ms(NOW)
    assert old + MINUTE_MS < horizon <= recent
    written, deleted = expire(entries, 1, horizon)
    assert (written, deleted) == ([retired_key(1)], [bucket_key(1, old), bucket_key(1, old + MINUTE_MS)])
    retired = entries[retired_key(1)]
    assert isinstance(retired, RetiredEntry) and retired.horizon == horizon
    assert sum(a.count for a in retired.state.series.values()) == 2
    assert bucket_key(1, old) not in entries and bucket_key(1, recent) in entries
    assert expire(entries, 1, horizon) == ([], [])  # nothing new to retire

    # A late span for a retired bucket is rejected as too old, whatever the message's timestamp says.
    applier.apply(entries, 1, 2, old, encode_wire([_span(8, old)]))
    meta = entries[meta_key(1)]
    assert isinstance(meta, PartitionMeta) and meta.too_old == 1
    assert _count(entries) == (1, 4)


def test_a_bucket_that_survived_its_retirement_is_not_folded_twice() -> None:
    """Crash after the retired entry reached the changelog, before the bucket's tombstone did."""
    applier = _short_retention()
    entries: dict[bytes, Entry] = {}
    old = NOW - 3 * HOUR_MS
    applier.apply(entries, 0, 0, old, encode_wire([_span(1, old)]))
    survivor = entries[bucket_key(0, old)]
    horizon = applier.oldest_allowed_ms(NOW)
    expire(entries, 0, horizon)
    entries[bucket_key(0, old)] = survivor  # recovered from the changelog without its tombstone
    assert expire(entries, 0, horizon + HOUR_MS) == ([retired_key(0)], [bucket_key(0, old)])
    retired = entries[retired_key(0)]
    assert isinstance(retired, RetiredEntry)
    assert sum(a.count for a in retired.state.series.values()) == 1


def test_compaction_folds_minutes_into_hours_which_take_late_spans_and_replays() -> None:
    applier = _applier()
    entries: dict[bytes, Entry] = {}
    hour = NOW - NOW % HOUR_MS - 5 * HOUR_MS
    payloads = [
        encode_wire([_span(1, hour + i * MINUTE_MS), _span(2, hour + HOUR_MS + i * MINUTE_MS)]) for i in range(3)
    ]
    for offset, payload in enumerate(payloads):
        applier.apply(entries, 0, offset, NOW, payload)
    survivor = entries[bucket_key(0, hour)]
    written, deleted = compact(entries, 0, hour + HOUR_MS)
    assert written == [hour_key(0, hour)] and len(deleted) == 3
    compacted = entries[hour_key(0, hour)]
    assert isinstance(compacted, BucketEntry) and compacted.offset == 2
    assert _count(entries) == (6, 9)

    for offset, payload in enumerate(payloads):  # a replay changes nothing
        applier.apply(entries, 0, offset, NOW, payload)
    assert _count(entries) == (6, 9)
    applier.apply(entries, 0, 3, NOW, encode_wire([_span(4, hour + 30 * MINUTE_MS)]))  # a late span
    assert bucket_key(0, hour + 30 * MINUTE_MS) not in entries
    assert _count(entries) == (7, 13)

    # A minute that survived its compaction (crash before its deletion) is dropped, never folded twice,
    # and retirement does not count it either.
    entries[bucket_key(0, hour)] = survivor
    assert compact(entries, 0, hour + HOUR_MS) == ([], [bucket_key(0, hour)])
    entries[bucket_key(0, hour)] = survivor
    written, deleted = expire(entries, 0, hour + HOUR_MS)
    retired = entries[retired_key(0)]
    assert isinstance(retired, RetiredEntry)
    assert sum(a.count for a in retired.state.series.values()) == 4
    assert set(deleted) == {hour_key(0, hour), bucket_key(0, hour)}


# ---------------------------------------------------------------- batching: apply_many and the batch paths
# The oracle: ``apply`` as it was before the batch paths (one ``prepare_batch`` and one ``BucketState.add``
# per span), except that spans are grouped by entry key (see the compacted-hour test below).
def reference_apply(
    applier: Applier, entries: dict[bytes, Entry], partition: int, offset: int, timestamp_ms: int, payload: bytes | None
) -> Applied:
    out = Applied()
    mkey = meta_key(partition)
    meta = entries.get(mkey)
    if not isinstance(meta, PartitionMeta):
        meta = PartitionMeta()
    fresh = offset > meta.offset
    try:
        if payload is None:
            raise ValueError("empty message value")
        spans = decode_wire(payload)
    except (msgspec.DecodeError, ValueError) as exc:
        out.poison = str(exc) or type(exc).__name__
        if fresh:
            meta.poison += 1
            meta.messages += 1
            meta.offset = offset
            entries[mkey] = meta
            out.dirty.append(mkey)
        return out
    rejected = {"too_old": 0, "future": 0, "invalid": 0}
    by_key: dict[bytes, list[Span]] = {}
    oldest = applier.oldest_allowed_ms(timestamp_ms)
    retired = entries.get(retired_key(partition))
    horizon = retired.horizon if isinstance(retired, RetiredEntry) else 0
    for span in spans:
        try:
            prepare_batch((span,), timestamp_ms, applier.pricer, oldest, applier.max_future_ms)
        except SpanRejected as exc:
            rejected[exc.reason if exc.reason in ("too_old", "future") else "invalid"] += 1
            continue
        at = span_time_ms(span)
        start = at - at % applier.settings.bucket_ms
        if start < horizon:
            rejected["too_old"] += 1
            continue
        key = hour_key(partition, start - start % HOUR_MS)
        if key not in entries:
            key = bucket_key(partition, start)
        by_key.setdefault(key, []).append(span)
        out.spans.append((span, at))
    for key, group in by_key.items():
        entry = entries.get(key)
        if not isinstance(entry, BucketEntry):
            entry = BucketEntry(-1, BucketState())
            entries[key] = entry
        elif entry.offset >= offset:
            continue
        for span in group:
            entry.state.add(span, applier.settings.caps)
        entry.offset = offset
        out.dirty.append(key)
    out.accepted = len(out.spans)
    if fresh:
        meta.messages += 1
        meta.spans += len(out.spans)
        meta.too_old += rejected["too_old"]
        meta.future += rejected["future"]
        meta.invalid += rejected["invalid"]
        meta.offset = offset
        entries[mkey] = meta
        out.dirty.append(mkey)
    return out


class _Pricer:
    """Prices model "m" at a micro-dollar per token, knows no other model, fails on model "bad"."""

    def cost(
        self, model: str, prompt_tokens: int, comp_tokens: int, provider: str | None = None, **_: int
    ) -> float | None:
        if model == "bad":
            raise ValueError("no price for this call")
        if model == "crash":
            raise RuntimeError("pricer bug")
        return (prompt_tokens + comp_tokens) / 1e6 if model == "m" else None


_AGES = [None, 0, 1, 2, 59, 61, 125, 300, 301, -10]  # minutes before NOW; None: unstamped, -10: future


@st.composite
def _message_spans(draw: st.DrawFn) -> list[Span]:
    spans = []
    for _ in range(draw(st.integers(0, 12))):
        age = draw(st.sampled_from([*_AGES, 40 * 24 * 60]))  # and one too old for retention
        fields: dict[str, object] = {
            "model": draw(st.sampled_from(["gpt-4o", "m", "bad"])),
            "prompt_tokens": draw(st.integers(0, 5000)),
            "caller": draw(st.sampled_from(["", "chat"])),
            "latency_ms": draw(st.one_of(st.none(), st.integers(0, 9000), st.floats(0, 9000))),
            "attributes": draw(st.sampled_from([{}, {"workflow": "a"}, {"workflow": "b", "eval.score": 0.5}])),
        }
        if draw(st.booleans()):
            fields["cost_usd"] = 0.001
        if age is not None:
            fields["started_at"] = format_ms(NOW - age * MINUTE_MS + draw(st.integers(0, MINUTE_MS - 1)))
        spans.append(msgspec.convert(fields, Span))
    return spans


_payloads = st.one_of(
    _message_spans().map(encode_wire),
    st.deferred(lambda: _usual_spans()).map(encode_wire),  # what the compiled decoder takes, mostly
    st.sampled_from([None, b"\xc1", msgspec.msgpack.encode({"v": 2, "spans": []})]),
)
#: Messages with offsets that go back now and then (replays), over a history the state may have seen.
_streams = st.lists(st.tuples(st.integers(0, 30), _payloads), max_size=25)


def _copy(entries: dict[bytes, Entry]) -> dict[bytes, Entry]:
    return {key: decode_entry(encode_entry(entry)) for key, entry in entries.items()}


def _snapshot(entries: dict[bytes, Entry]) -> list[tuple[bytes, bytes]]:
    return [(key, encode_entry(entry)) for key, entry in entries.items()]


def _index_pairs(items: list[IndexItem]) -> list[tuple[bytes, int]]:
    """Accepted spans as ``(JSON, start)`` (what the trace index stores), compiled batches expanded."""
    pairs = []
    for item in items:
        if isinstance(item, tuple):
            pairs.append((encode_span(item[0]), item[1]))
        else:
            pairs += zip(item.lines().split(b"\n")[:-1], item.starts(), strict=True)
    return pairs


def _results(results: list[Applied]) -> list[tuple[list[bytes], list[tuple[bytes, int]], int, str | None]]:
    return [(r.dirty, _index_pairs(r.spans), r.accepted, r.poison) for r in results]


def _history(history: list[tuple[int, bytes | None]], compact_hours: int, expire_hours: int) -> dict[bytes, Entry]:
    """A partition's state after ``history`` and optionally a compaction and a retirement pass."""
    applier = Applier(TimelineSettings(), _Pricer(), 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    for offset, payload in history:
        applier.apply(entries, 0, offset, NOW, payload)
    top = NOW - NOW % HOUR_MS
    if compact_hours:
        compact(entries, 0, top - compact_hours * HOUR_MS)
    if expire_hours:
        expire(entries, 0, top - expire_hours * HOUR_MS)
    return entries


@given(
    _streams,
    _streams,
    st.integers(0, 3),
    st.integers(0, 6),
    st.lists(st.integers(0, 30), max_size=6),
    st.sampled_from([1, aggregate_module.BULK_FROM]),
)
@settings(max_examples=150, deadline=None)
def test_apply_many_equals_apply_one_by_one(
    history: list[tuple[int, bytes | None]],
    stream: list[tuple[int, bytes | None]],
    compact_hours: int,
    expire_hours: int,
    cuts: list[int],
    bulk_from: int,
) -> None:
    """Any split of a stream into apply_many batches leaves the entries (bytes and key order) and returns the
    results of one apply per message, whatever the state's history (compacted hours, retired buckets)."""
    before = _history(history, compact_hours, expire_hours)
    applier = Applier(TimelineSettings(), _Pricer(), 5 * MINUTE_MS)
    one_by_one, batched = _copy(before), _copy(before)
    messages = [(offset, NOW + 5, payload) for offset, payload in stream]
    expected = [applier.apply(one_by_one, 0, *message) for message in messages]
    points = sorted({c % (len(messages) + 1) for c in cuts} | {0, len(messages)})
    with mock.patch.object(aggregate_module, "BULK_FROM", bulk_from):
        got = [r for a, b in pairwise(points) for r in applier.apply_many(batched, 0, messages[a:b])]
    assert _snapshot(batched) == _snapshot(one_by_one)
    assert _results(got) == _results(expected)


@given(_streams, _streams, st.integers(0, 3), st.integers(0, 6), st.sampled_from([1, aggregate_module.BULK_FROM]))
@settings(max_examples=150, deadline=None)
def test_apply_equals_the_per_span_reference(
    history: list[tuple[int, bytes | None]],
    stream: list[tuple[int, bytes | None]],
    compact_hours: int,
    expire_hours: int,
    bulk_from: int,
) -> None:
    before = _history(history, compact_hours, expire_hours)
    applier = Applier(TimelineSettings(), _Pricer(), 5 * MINUTE_MS)
    batched, reference = _copy(before), _copy(before)
    with mock.patch.object(aggregate_module, "BULK_FROM", bulk_from):
        got = [applier.apply(batched, 0, offset, NOW + 5, payload) for offset, payload in stream]
    expected = [reference_apply(applier, reference, 0, offset, NOW + 5, payload) for offset, payload in stream]
    assert _snapshot(batched) == _snapshot(reference)
    assert _results(got) == _results(expected)


def test_late_spans_of_two_minutes_of_a_compacted_hour_all_count() -> None:
    """Both go to the hour entry: the second used to be skipped as if the entry had seen the message."""
    applier = _applier()
    entries: dict[bytes, Entry] = {}
    hour = NOW - NOW % HOUR_MS - 5 * HOUR_MS
    applier.apply(entries, 0, 0, NOW, encode_wire([_span(1, hour)]))
    compact(entries, 0, hour + HOUR_MS)
    late = encode_wire([_span(2, hour + 10 * MINUTE_MS), _span(4, hour + 20 * MINUTE_MS)])
    applied = applier.apply(entries, 0, 1, NOW, late)
    assert applied.dirty == [hour_key(0, hour), meta_key(0)]
    assert _count(entries) == (3, 7)
    applier.apply(entries, 0, 1, NOW, late)  # a replay changes nothing
    assert _count(entries) == (3, 7)


def test_apply_many_adds_what_it_queued_when_a_message_raises() -> None:
    """A message that raises (a pricer bug) leaves the entries of one apply per message up to it."""
    applier = Applier(TimelineSettings(), _Pricer(), 5 * MINUTE_MS)
    good = encode_wire([_span(1, NOW, model="m", cost_usd=None), _span(2, NOW - MINUTE_MS)])
    crash = encode_wire([_span(4, NOW, model="crash", cost_usd=None)])
    one_by_one: dict[bytes, Entry] = {}
    for offset in (0, 1):
        applier.apply(one_by_one, 0, offset, NOW, good)
    batched: dict[bytes, Entry] = {}
    with pytest.raises(RuntimeError, match="pricer bug"):
        applier.apply_many(batched, 0, [(0, NOW, good), (1, NOW, good), (2, NOW, crash), (3, NOW, good)])
    assert _snapshot(batched) == _snapshot(one_by_one)
    assert _count(batched) == (4, 6)


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5), st.booleans()), min_size=1, max_size=25))
@settings(max_examples=60, deadline=None)
def test_deferred_additions_once_settled_equal_applying_each_message(steps: list[tuple[int, int, bool]]) -> None:
    """The worker applies messages with ``apply_deferred`` and settles before it encodes anything: whatever
    the interleaving of partitions, replays (an offset applied again) and poison, the settled entries encode
    exactly as those of ``apply`` message by message; before settling only offsets and counters moved."""
    rng = random.Random(len(steps))
    payloads = {
        (partition, offset): b"\xc1poison"
        if poison
        else encode_wire([_span(rng.randint(1, 9), NOW - rng.choice([0, 1, 2]) * MINUTE_MS) for _ in range(3)])
        for partition, offset, poison in steps
    }
    applier = _applier()
    direct: dict[bytes, Entry] = {}
    deferred: dict[bytes, Entry] = {}
    additions = Additions(applier.settings.caps)
    for partition, offset, _ in steps:
        payload = payloads[(partition, offset)]
        expected = applier.apply(direct, partition, offset, NOW, payload)
        before = {key: encode_entry(entry) for key, entry in deferred.items()}
        got = applier.apply_deferred(deferred, partition, offset, NOW, payload, additions)
        assert _results([got]) == _results([expected])
        for key, data in before.items():  # aggregates untouched until settled
            entry = decode_entry(data)
            if isinstance(entry, BucketEntry):
                current = deferred[key]
                assert isinstance(current, BucketEntry)
                assert encode_entry(BucketEntry(entry.offset, current.state)) == data
    additions.settle()
    assert additions.spans == 0
    assert {k: encode_entry(v) for k, v in deferred.items()} == {k: encode_entry(v) for k, v in direct.items()}


needs_native_route = pytest.mark.skipif(native.route_spans is None, reason="compiled module not built")


@st.composite
def _usual_spans(draw: st.DrawFn) -> list[Span]:
    """Spans the compiled routing takes (priced, stamped, in bounds), now and then with one it declines."""
    spans = []
    for _ in range(draw(st.integers(1, 12))):
        fields: dict[str, object] = {"model": "gpt-4o", "prompt_tokens": 3, "cost_usd": 0.001}
        fields["latency_ms"] = draw(st.one_of(st.none(), st.integers(0, 9000), st.floats(0, 9000)))
        fields["started_at"] = format_ms(NOW - draw(st.sampled_from([0, 1, 59, 61, 125])) * MINUTE_MS)
        spans.append(msgspec.convert(fields, Span))
    spans += draw(st.one_of(st.just([]), _message_spans()))
    return spans


def _routed(applier: Applier, entries: dict[bytes, Entry], spans: list[Span]) -> object:
    out = Applied()
    rejected, by_key = applier._route(applier._bounds(entries, 0, NOW + 5), NOW + 5, spans, out)
    encoded = {key: [encode_wire([s]) for s in members] for key, members in by_key.items()}
    return rejected, list(encoded.items()), [(encode_wire([s]), at) for s, at in out.spans], encode_wire(spans)


@needs_native_route
@given(_streams, st.integers(0, 3), st.integers(0, 6), _usual_spans(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_compiled_routing_equals_the_python_routing(
    history: list[tuple[int, bytes | None]], compact_hours: int, expire_hours: int, spans: list[Span], priced: bool
) -> None:
    """Same rejections, the same spans under the same entry keys in the same order, the same stamped spans,
    whatever the state (compacted hours, a retired horizon) and whether a pricer is set."""
    entries = _history(history, compact_hours, expire_hours)
    applier = Applier(TimelineSettings(), _Pricer() if priced else None, 5 * MINUTE_MS)
    payload = encode_wire(spans)
    compiled = _routed(applier, _copy(entries), decode_wire(payload))
    with mock.patch.object(native, "route_spans", None):
        expected = _routed(applier, _copy(entries), decode_wire(payload))
    assert compiled == expected


@needs_native_route
def test_compiled_routing_takes_the_usual_message_and_declines_the_rest() -> None:
    route = native.route_spans
    assert route is not None

    def key_of(start: int) -> bytes:
        return bucket_key(0, start)

    def spans(**fields: object) -> list[Span]:
        return [_span(1, NOW), _span(2, NOW - MINUTE_MS, **fields)]

    oldest, latest = NOW - HOUR_MS, NOW + MINUTE_MS
    routed = route(spans(), oldest, latest, MINUTE_MS, 0, True, key_of)
    assert routed is not None
    by_key, pairs = routed
    assert list(by_key) == [bucket_key(0, NOW), bucket_key(0, NOW - MINUTE_MS)]
    assert [at for _, at in pairs] == [NOW, NOW - MINUTE_MS]
    assert route(spans(cost_usd=None), oldest, latest, MINUTE_MS, 0, True, key_of) is None  # to be priced
    assert route(spans(cost_usd=None), oldest, latest, MINUTE_MS, 0, False, key_of) is not None  # no pricer
    assert route(spans(), NOW, latest, MINUTE_MS, 0, True, key_of) is None  # too old
    assert route(spans(), oldest, NOW - 1, MINUTE_MS, 0, True, key_of) is None  # future
    assert route(spans(), oldest, latest, MINUTE_MS, NOW, True, key_of) is None  # below the retired horizon
    unstamped = [Span(trace_id="t", span_id="s", model="m", prompt_tokens=1, cost_usd=0.1)]
    assert route(unstamped, oldest, latest, MINUTE_MS, 0, True, key_of) is None


def test_compacted_hours_and_retired_totals_keep_the_attribute_caps() -> None:
    """A new attribute value every minute: the worker's hour entries and retired totals keep the per-bucket
    caps (values beyond under ``__overflow__``), and every span still counts under its key."""
    caps = Caps(max_attribute_keys=4, max_attribute_values=3)
    applier = Applier(TimelineSettings(caps=caps), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    start = NOW - 3 * HOUR_MS - NOW % HOUR_MS
    spans = [_span(1, start + m * MINUTE_MS, attributes={"request": f"r{m}"}) for m in range(120)]
    applier.apply(entries, 1, 0, NOW, encode_wire(spans))
    compact(entries, 1, NOW - NOW % HOUR_MS, caps)
    hours = [e for k, e in entries.items() if parse_key(k)[1] is not None and isinstance(e, BucketEntry)]
    assert hours and all(len(set(e.state.attributes["request"]) - {OVERFLOW}) <= 3 for e in hours)
    expire(entries, 1, NOW - NOW % HOUR_MS, caps)
    retired = entries[retired_key(1)]
    assert isinstance(retired, RetiredEntry)
    values = retired.state.attributes["request"]
    assert len(set(values) - {OVERFLOW}) <= 3
    assert sum(a.count for by_series in values.values() for a in by_series.values()) == 120


def test_compacted_hours_and_retired_totals_keep_the_series_cap_whatever_the_table_order() -> None:
    """A new model every span (straight from Kafka, past any API's caps): the partition's minutes keep
    ``max_series`` series each, and so do the hour entries and the retired totals they fold into, with every
    span counted (in the overflow series beyond the cap) and every fold counted once. The table restored from the
    changelog after a rebalance may hold the entries in another order: compaction decides the same."""
    caps = Caps(max_series=2)
    applier = Applier(TimelineSettings(caps=caps), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    start = NOW - 3 * HOUR_MS - NOW % HOUR_MS
    spans = [_span(i, start + (i % 120) * MINUTE_MS, model=f"flood-{i}") for i in range(600)]
    for offset, at in enumerate(range(0, 600, 50)):
        applier.apply(entries, 1, offset, NOW, encode_wire(spans[at : at + 50]))
    minutes = [e for e in entries.values() if isinstance(e, BucketEntry)]
    assert len(minutes) == 120 and all(len(e.state.series) == 3 for e in minutes)  # 2 kept + the overflow series
    assert sum(e.state.overflowed_series for e in minutes) == 600 - 2 * 120
    reordered = {k: decode_entry(encode_entry(e)) for k, e in reversed(list(entries.items()))}
    outcomes = []
    for table in (entries, reordered):
        compact(table, 1, NOW - NOW % HOUR_MS, caps)
        hours = {k: e for k, e in table.items() if isinstance(e, BucketEntry)}
        assert hours and all(len(e.state.series) <= 3 for e in hours.values())
        assert sum(e.state.series[k].count for e in hours.values() for k in e.state.series) == 600
        assert sum(e.state.overflowed_series for e in hours.values()) == 600 - 2 * len(hours)
        expire(table, 1, NOW - NOW % HOUR_MS, caps)
        retired = table[retired_key(1)]
        assert isinstance(retired, RetiredEntry) and len(retired.state.series) <= 3
        assert sum(a.count for a in retired.state.series.values()) == 600
        assert retired.state.overflowed_series == 600 - 2
        outcomes.append(_encode_all(table))
    assert outcomes[0] == outcomes[1]


def _encode_all(entries: dict[bytes, Entry]) -> bytes:
    return msgspec.msgpack.encode({k: encode_entry(e) for k, e in sorted(entries.items())})
