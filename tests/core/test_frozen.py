"""Frozen buckets and memos (tokentrace/core/frozen.py): every answer equal to the live reference's, through
freezing, thawing by later writes, compaction, and a snapshot's encode-decode-restore with its memos."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_timeline import NOW, span_strategy
from tokentrace.core import frozen
from tokentrace.core import timeline as timeline_module
from tokentrace.core.buckets import BUILTIN_DIMENSIONS, OVERFLOW, SERIES, BucketState, Caps
from tokentrace.core.span import Span
from tokentrace.core.timeline import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    FrozenTimelineSnapshot,
    Timeline,
    TimelineSettings,
    TimelineSnapshot,
)

LATER = NOW + 2 * HOUR_MS
SETTINGS = TimelineSettings(fine_retention_ms=12 * HOUR_MS, retention_ms=5 * DAY_MS)
timed = st.lists(st.tuples(span_strategy, st.integers(0, 4 * DAY_MS)), min_size=1, max_size=80)
specs = st.sampled_from(
    [
        (None, {}),
        ("model", {}),
        ("provider", {}),
        ("caller", {}),
        (SERIES, {}),
        ("workflow", {}),
        (None, {"model": "gpt-4o"}),
        ("caller", {"provider": "openai"}),
        ("workflow", {"workflow": "chat"}),
        (None, {"workflow": "agent", "model": "gpt-4o-mini"}),
    ]
)
BUILTINS = (*BUILTIN_DIMENSIONS, SERIES)
WINDOWS = (MINUTE_MS, HOUR_MS, 90 * MINUTE_MS, DAY_MS, 3 * DAY_MS, 30 * DAY_MS)
_encode = msgspec.msgpack.encode


def build(data: list[tuple[Span, int]]) -> Timeline:
    timeline = Timeline(SETTINGS)
    for span, age in data:
        timeline.add(span, NOW - age)
    return timeline


def freeze_all(timeline: Timeline) -> None:
    """Two maintenance passes with no write between them, two hours on: every bucket is frozen after the
    second, and later writes into them wait (``_defer``) until a read applies them."""
    timeline.compact(LATER)
    timeline.compact(LATER)
    assert timeline.cache_stats().live_buckets == 0


def answers(timeline: Timeline, groupby: str | None, where: dict[str, str]) -> list[object]:
    out: list[object] = []
    end = timeline.window_end(NOW)
    for window in WINDOWS:
        start = timeline.window_start(NOW, window)
        out.append(timeline.query(start, end, groupby, where))
        parts = timeline.query_parts(start, end, groupby, where)
        out.append(parts.total())
        parts.install()
        out.append(sorted(timeline.attribute_keys(start, end)))
    out.append(timeline.lifetime(groupby))
    lifetime = timeline.lifetime_parts(groupby)
    out.append(lifetime.total())
    lifetime.install()
    return out


@given(timed, timed, specs)
@settings(max_examples=80, deadline=None)
def test_frozen_timeline_answers_as_the_live_one(
    first: list[tuple[Span, int]], late: list[tuple[Span, int]], spec: tuple[str | None, dict[str, str]]
) -> None:
    """Frozen, queried, thawed by back-filled writes, frozen again: the same answers and the same bytes."""
    reference, subject = build(first), build(first)
    freeze_all(subject)
    reference.compact(LATER)
    assert answers(subject, *spec) == answers(reference, *spec)
    for span, age in late:
        reference.add(span, NOW - age)
        subject.add(span, NOW - age)
    assert answers(subject, *spec) == answers(reference, *spec)
    assert _encode(subject.snapshot()) == _encode(reference.snapshot())
    reference.compact(LATER)
    freeze_all(subject)
    assert answers(subject, *spec) == answers(reference, *spec)
    assert _encode(subject.snapshot()) == _encode(reference.snapshot())


@given(timed, timed, specs, st.booleans())
@settings(max_examples=60, deadline=None)
def test_a_restored_snapshot_answers_as_the_timeline_it_was_taken_from(
    first: list[tuple[Span, int]], late: list[tuple[Span, int]], spec: tuple[str | None, dict[str, str]], keep: bool
) -> None:
    """Encoded with its memos, decoded frozen (or live), restored: the same answers, before and after later
    writes; a restored memo is used only while its block is unchanged."""
    original = build(first)
    answers(original, *spec)
    original.compact(NOW)  # the hours before the current one are settled: warm_memos computes theirs
    assert original.warm_memos()
    snapshot = original.snapshot()
    snapshot.memos = original.memo_records()
    blob = _encode(snapshot)
    decoded = msgspec.msgpack.decode(blob, type=FrozenTimelineSnapshot if keep else TimelineSnapshot)
    restored = Timeline(SETTINGS)
    restored.restore(decoded)
    assert restored.cache_stats().block_memos == len(snapshot.memos)
    if keep:
        assert restored.cache_stats().live_buckets == 0
    reference = build(first)  # no memos at all: everything recomputed from the buckets
    reference.compact(NOW)
    assert answers(restored, *spec) == answers(reference, *spec)
    for span, age in late:
        for timeline in (restored, reference):
            timeline.add(span, NOW - age)
    assert answers(restored, *spec) == answers(reference, *spec)


def test_memo_records_cover_every_day_and_hour_for_the_persisted_specs() -> None:
    timeline = build([(Span(model="m", prompt_tokens=1), offset * 37 * MINUTE_MS) for offset in range(100)])
    timeline.compact(NOW + DAY_MS)
    assert not timeline.warm_memos(0.0)  # out of time after the first memo
    assert timeline.warm_memos()
    records = timeline.memo_records()
    blocks = {(r.size, r.block, r.groupby) for r in records}
    hours = {(NOW - 37 * MINUTE_MS * o) // HOUR_MS * HOUR_MS for o in range(100)}
    for groupby in (None, "model", "provider", "caller"):
        assert {(HOUR_MS, h, groupby) for h in hours} <= blocks
    assert any(r.groupby == SERIES and r.size == DAY_MS for r in records)


def test_compaction_that_regroups_attributes_makes_the_hours_memos_stale() -> None:
    """Two values a minute, at most two an hour: the merged hour puts the rest under ``__overflow__``, and a memo
    made from the minutes must not outlive that (nor be persisted for a restart)."""
    caps = Caps(max_attribute_keys=4, max_attribute_values=2)
    timeline = Timeline(TimelineSettings(fine_retention_ms=HOUR_MS, retention_ms=5 * DAY_MS, caps=caps))
    hour = NOW - 3 * HOUR_MS - (NOW - 3 * HOUR_MS) % HOUR_MS
    for minute, values in enumerate((("a", "b"), ("c", "d"), ("a", "e"))):
        for value in values:
            timeline.add(Span(model="m", prompt_tokens=1, attributes={"workflow": value}), hour + minute * MINUTE_MS)
    window = (hour - DAY_MS, NOW)
    assert set(timeline.query(*window, "workflow")) == {"a", "b", "c", "d", "e"}  # memoised from the minutes
    timeline.compact(NOW)
    recount = Timeline(timeline.settings)
    recount.restore(timeline.snapshot())
    assert timeline.query(*window, "workflow") == recount.query(*window, "workflow")
    assert set(recount.query(*window, "workflow")) == {"a", "b", OVERFLOW}
    restored = Timeline(timeline.settings)
    snapshot = timeline.snapshot()
    snapshot.memos = timeline.memo_records()
    restored.restore(msgspec.msgpack.decode(_encode(snapshot), type=FrozenTimelineSnapshot))
    assert restored.query(*window, "workflow") == recount.query(*window, "workflow")


def test_a_snapshot_without_memos_still_restores() -> None:
    """Snapshots written before memos were persisted lack the field."""

    class Before(msgspec.Struct):
        fine: dict[int, BucketState]
        coarse: dict[int, BucketState]
        retired: BucketState

    original = build([(Span(model="m", prompt_tokens=3), 5 * HOUR_MS), (Span(model="n", comp_tokens=2), 2 * DAY_MS)])
    snap = original.snapshot()
    blob = _encode(Before(snap.fine, snap.coarse, snap.retired))
    restored = Timeline(SETTINGS)
    restored.restore(msgspec.msgpack.decode(blob, type=FrozenTimelineSnapshot))
    assert answers(restored, "model", {}) == answers(original, "model", {})


bucket_spans = st.lists(span_strategy, max_size=40)


@given(bucket_spans, specs)
@settings(max_examples=150, deadline=None)
def test_frozen_projection_is_the_live_projection(spans: list[Span], spec: tuple[str | None, dict[str, str]]) -> None:
    state = BucketState()
    for span in spans:
        state.add(span, Caps(max_attribute_keys=2, max_attribute_values=2))
    raw = frozen.freeze(state)
    assert frozen.project(raw, *spec) == state.project(*spec)
    assert frozen.attribute_keys(raw) == list(state.attributes)
    assert _encode(frozen.thaw(raw)) == bytes(raw)


def test_a_frozen_projection_refuses_what_the_live_one_refuses() -> None:
    state = BucketState()
    state.add(Span(model="m", prompt_tokens=1, attributes={"a": "1", "b": "2"}), Caps())
    raw = frozen.freeze(state)
    for groupby, where in ((None, {"a": "1", "b": "2"}), ("a", {"b": "2"})):
        with pytest.raises(ValueError):
            state.project(groupby, where)
        with pytest.raises(ValueError):
            frozen.project(raw, groupby, where)


def test_caches_stay_within_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeline_module, "_BUCKET_MEMO_SIZE", 50)
    monkeypatch.setattr(timeline_module, "_BLOCK_MEMO_BYTES", 20_000)
    monkeypatch.setattr(timeline_module, "_WINDOW_MEMO_GROUPS", 40)
    timeline = Timeline(SETTINGS)
    for minute in range(0, 4 * DAY_MS // MINUTE_MS, 3):
        timeline.add(
            Span(model=f"m{minute % 7}", caller=f"c{minute % 5}", prompt_tokens=1, latency_ms=minute),
            NOW - minute * MINUTE_MS,
        )
    for now in range(NOW - 3 * HOUR_MS, NOW, 7 * MINUTE_MS):
        for groupby in (None, "model", "caller", SERIES):
            timeline.query(now - 3 * DAY_MS, now, groupby)
    stats = timeline.cache_stats()
    assert 0 < stats.bucket_memos <= 50
    assert 0 < stats.block_memo_bytes <= 20_000
    assert 0 < stats.window_memo_groups <= 40
    reference = Timeline(SETTINGS)
    reference.restore(timeline.snapshot())
    for groupby in (None, "model", SERIES):
        assert timeline.query(NOW - 3 * DAY_MS, NOW, groupby) == reference.query(NOW - 3 * DAY_MS, NOW, groupby)


varied_spans = st.lists(
    st.builds(
        lambda span, extra: msgspec.structs.replace(span, attributes={**span.attributes, **extra}),
        span_strategy,
        st.dictionaries(
            st.sampled_from(["tier", "flag", "user"]),
            st.one_of(st.integers(0, 3), st.booleans(), st.sampled_from(["a", "b", "c"]), st.floats(0, 1)),
            max_size=3,
        ),
    ),
    max_size=40,
)
capped = st.sampled_from(
    [Caps(), Caps(max_attribute_keys=1, max_attribute_values=2), Caps(2, 1), Caps(max_series=1), Caps(2, 1, 2)]
)


@given(varied_spans, varied_spans, capped)
@settings(max_examples=150, deadline=None)
def test_adding_to_a_frozen_bucket_is_adding_to_the_live_one(before: list[Span], late: list[Span], caps: Caps) -> None:
    """Byte for byte, caps and overflow counts included, with only the reached aggregates decoded."""
    state = BucketState()
    for span in before:
        state.add(span, caps)
    raw = frozen.freeze(state)
    for span in late:
        state.add(span, caps)
    assert bytes(frozen.add_many(raw, late, caps)) == _encode(state)


def test_deferred_writes_are_applied_in_bulk_the_fullest_buckets_first() -> None:
    data = [(Span(model=f"m{i % 3}", prompt_tokens=i + 1, latency_ms=i), (i % 50) * HOUR_MS) for i in range(400)]
    reference, subject = build(data[:100]), build(data[:100])
    freeze_all(subject)
    reference.compact(LATER)
    for span, age in data[100:]:
        reference.add(span, NOW - age)
        subject.add(span, NOW - age)
    assert subject.pending_spans == 300
    assert subject.flush_pending(keep=100)
    assert 0 < subject.pending_spans <= 100
    assert subject.cache_stats().live_buckets == 0  # applied to the bytes, nothing thawed
    assert not subject.flush_pending(0.0)  # out of time after the first bucket
    assert subject.flush_pending() and subject.pending_spans == 0
    # Decoded: an int latency kept as a sketch's min or max is an int in a live bucket and a float once encoded
    # and decoded (as across any restart), so the bytes may differ where the values are equal.
    decode = msgspec.msgpack.Decoder(TimelineSnapshot).decode
    assert decode(_encode(subject.snapshot())) == decode(_encode(reference.snapshot()))


ATTRIBUTE_CAPS = TimelineSettings(
    fine_retention_ms=12 * HOUR_MS, retention_ms=5 * DAY_MS, caps=Caps(max_attribute_keys=2, max_attribute_values=2)
)
attributed = st.lists(
    st.tuples(
        st.builds(
            lambda span, extra: msgspec.structs.replace(span, attributes={**span.attributes, **extra}),
            span_strategy,
            st.dictionaries(st.sampled_from(["tier", "user"]), st.sampled_from(["a", "b", "c"]), max_size=2),
        ),
        st.integers(0, 4 * DAY_MS),
    ),
    min_size=1,
    max_size=80,
)


def restarted(timeline: Timeline) -> Timeline:
    """``timeline`` after a snapshot with its memos and a restart (its buckets frozen)."""
    snapshot = timeline.snapshot()
    snapshot.memos = timeline.memo_records()
    restored = Timeline(timeline.settings)
    restored.restore(msgspec.msgpack.decode(_encode(snapshot), type=FrozenTimelineSnapshot))
    return restored


@given(attributed, st.sampled_from(["workflow", "tier", "user"]))
@settings(max_examples=60, deadline=None)
def test_warmed_attribute_memos_answer_as_the_buckets_do(data: list[tuple[Span, int]], groupby: str) -> None:
    """Memos grouped by every attribute key (capped keys and values included), warmed in slices, carried by a
    snapshot: a restart answers as a timeline that recounts everything from its buckets."""
    original = Timeline(ATTRIBUTE_CAPS)
    for span, age in data:
        original.add(span, NOW - age)
    original.compact(NOW)
    while not original.warm_memos(0.0):  # one memo (or one hour's keys) a slice: every slice makes progress
        pass
    reference = Timeline(ATTRIBUTE_CAPS)
    reference.restore(original.snapshot())
    restored = restarted(original)
    assert answers(restored, groupby, {}) == answers(reference, groupby, {})
    assert answers(restored, groupby, {groupby: "a"}) == answers(reference, groupby, {groupby: "a"})


def test_after_a_restart_an_attribute_grouped_window_decodes_only_the_hot_buckets() -> None:
    """The first ``groupby=<attribute>`` over the whole retention after a restart reads day and hour memos
    that the snapshot carried: it decodes the buckets of the hot hours (never memoised ahead), not all of them."""
    data = [
        (
            Span(model="m", prompt_tokens=1, attributes={"workflow": f"w{i % 3}", "tier": f"t{i % 2}"}),
            i * 13 * MINUTE_MS,
        )
        for i in range(4 * DAY_MS // (13 * MINUTE_MS))
    ]
    original = build(data)
    original.compact(NOW)
    assert original.warm_memos()
    records = {(r.size, r.block, r.groupby) for r in original.memo_records()}
    settled_hours = {(NOW - age) // HOUR_MS * HOUR_MS for _, age in data} - set(range(original.hot_from, NOW, HOUR_MS))
    for name in ("workflow", "tier"):
        assert {(HOUR_MS, hour, name) for hour in settled_hours} <= records
    reference = Timeline(SETTINGS)
    reference.restore(original.snapshot())
    restored = restarted(original)
    hot = sum(1 for _, age in data if NOW - age >= restored.hot_from)
    start, end = restored.window_start(NOW, 30 * DAY_MS), restored.window_end(NOW)
    for name in ("workflow", "tier"):
        before = frozen.decoded_projections()
        parts = restored.query_parts(start, end, name)
        assert parts.total() == reference.query(start, end, name)
        assert frozen.decoded_projections() - before == hot
        parts.install()
    bare = Timeline(SETTINGS)  # the same buckets, frozen, without the memos: every bucket decoded
    bare.restore(msgspec.msgpack.decode(_encode(original.snapshot()), type=FrozenTimelineSnapshot))
    before = frozen.decoded_projections()
    assert bare.query(start, end, "workflow") == reference.query(start, end, "workflow")
    assert frozen.decoded_projections() - before == bare.cache_stats().frozen_buckets > 10 * hot


def test_a_restart_reads_no_hours_keys_and_later_hours_bring_new_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restored hours are taken to hold the keys the snapshot's memos group by: warming right after a restart
    reads no bucket (it would compete with the first queries). A key first seen in an hour that settles after the
    restart is read there, and then memoised over every settled hour."""
    data = [
        (Span(model="m", prompt_tokens=1, attributes={"workflow": f"w{i % 3}"}), i * 17 * MINUTE_MS)
        for i in range(3 * DAY_MS // (17 * MINUTE_MS))
    ]
    original = build(data)
    original.compact(NOW)
    assert original.warm_memos()
    restored = restarted(original)
    reads: list[int] = []
    keys_of = frozen.attribute_keys
    monkeypatch.setattr(frozen, "attribute_keys", lambda raw: reads.append(1) or keys_of(raw))
    before = frozen.decoded_projections()
    assert restored.warm_memos()
    assert (reads, frozen.decoded_projections() - before) == ([], 0)
    restored.add(Span(model="m", prompt_tokens=1, attributes={"tier": "gold"}), NOW)
    restored.compact(NOW + 2 * HOUR_MS)  # the hour of NOW settles
    assert restored.warm_memos()
    assert reads  # the hours that settled since the restart were read
    tier_hours = {r.block for r in restored.memo_records() if r.groupby == "tier" and r.size == HOUR_MS}
    workflow_hours = {r.block for r in restored.memo_records() if r.groupby == "workflow" and r.size == HOUR_MS}
    assert workflow_hours <= tier_hours
    reference = Timeline(SETTINGS)
    reference.restore(restored.snapshot())
    end = NOW + 2 * HOUR_MS
    for name in ("tier", "workflow"):
        assert restored.query(end - 30 * DAY_MS, end, name) == reference.query(end - 30 * DAY_MS, end, name)


def test_warming_without_attributes_leaves_them_for_a_later_pass() -> None:
    """What the store asks at start-up: the built-in specs' memos only; a later call (the maintenance pass) adds the
    attribute keys'."""
    timeline = build(
        [(Span(model="m", prompt_tokens=1, attributes={"workflow": "w"}), age) for age in (5 * HOUR_MS, 0)]
    )
    timeline.compact(NOW)
    assert timeline.warm_memos(attributes=False)
    assert None in {r.groupby for r in timeline.memo_records()} <= {None, *BUILTINS}
    assert timeline.warm_memos()
    assert "workflow" in {r.groupby for r in timeline.memo_records()}


def test_a_snapshot_that_does_not_know_its_keys_has_them_read_after_the_restart() -> None:
    """A snapshot written before the writer had read any hour's keys (or by a version that did not record them)
    says None: the restored timeline reads them, and warms their memos."""
    timeline = build(
        [(Span(model="m", prompt_tokens=1, attributes={"workflow": "w"}), age) for age in (5 * HOUR_MS, 0)]
    )
    timeline.compact(NOW)
    assert timeline.snapshot().attribute_keys is None  # not warmed yet
    assert timeline.warm_memos()
    assert timeline.snapshot().attribute_keys == ["workflow"]
    snapshot = timeline.snapshot()
    snapshot.attribute_keys = None
    restored = Timeline(SETTINGS)
    restored.restore(snapshot)
    assert restored.warm_memos()
    assert any(r.groupby == "workflow" for r in restored.memo_records())
    assert restored.snapshot().attribute_keys == ["workflow"]


def test_warming_attribute_memos_stops_at_half_the_memo_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attribute keys come after the built-in specs and never push the memos past half their byte budget (where
    a query's memo would start evicting them)."""
    data = [
        (Span(model="m", prompt_tokens=1, attributes={f"k{i % 9}": str(i % 4)}), i * 7 * MINUTE_MS)
        for i in range(4 * DAY_MS // (7 * MINUTE_MS))
    ]
    timeline = build(data)
    timeline.compact(NOW)
    assert timeline.warm_memos()
    whole = timeline.cache_stats().block_memo_bytes
    builtin = sum(len(r.projection) for r in timeline.memo_records() if r.groupby is None or r.groupby in BUILTINS)
    monkeypatch.setattr(timeline_module, "_BLOCK_MEMO_BYTES", 2 * (builtin + (whole - builtin) // 3))
    capped = build(data)  # room for the built-in memos and about a third of the attribute ones
    capped.compact(NOW)
    assert capped.warm_memos()
    groupbys = {r.groupby for r in capped.memo_records()}
    assert {None, "model", "provider", "caller", SERIES} <= groupbys  # the built-in specs all fit first
    assert 0 < len(groupbys - {None, *BUILTINS}) < 9  # then some attribute keys, not all nine
    assert capped.cache_stats().block_memo_bytes <= timeline_module._BLOCK_MEMO_BYTES // 2 + 2_000
