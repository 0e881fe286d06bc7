"""The worker's replay rules, without Kafka: per-entry offsets make any replay harmless."""

from __future__ import annotations

import random

import msgspec

from tokentrace.core.buckets import BucketState
from tokentrace.core.codec import encode_wire
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, TimelineSettings
from tokentrace.processors.state import (
    Applier,
    BucketEntry,
    Entry,
    PartitionMeta,
    RetiredEntry,
    bucket_key,
    compact,
    decode_entry,
    encode_entry,
    expire,
    hour_key,
    meta_key,
    parse_key,
    retired_key,
)

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
