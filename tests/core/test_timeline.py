"""Window queries against a brute-force recount of the raw spans."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core import timeline as timeline_module
from tokentrace.core.aggregate import to_nanos
from tokentrace.core.buckets import OVERFLOW, SERIES, BucketState, Caps
from tokentrace.core.sketch import RELATIVE_ACCURACY
from tokentrace.core.span import Span
from tokentrace.core.timeline import DAY_MS, HOUR_MS, MINUTE_MS, Timeline, TimelineSettings, total

NOW = 1_780_000_000_000 + 17 * MINUTE_MS + 12_345  # mid-bucket, mid-hour
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet")

span_strategy = st.builds(
    lambda model, caller, prompt, comp, latency, cost, status, score, workflow: Span(
        model=model,
        provider="openai" if model.startswith("gpt") else "anthropic",
        caller=caller,
        prompt_tokens=prompt,
        comp_tokens=comp,
        latency_ms=latency,
        cost_usd=cost,
        status=status,
        attributes={"workflow": workflow} | ({"eval.score": score} if score is not None else {}),
    ),
    st.sampled_from(MODELS),
    st.sampled_from(("", "svc-a", "svc-b")),
    st.integers(0, 20_000),
    st.integers(0, 4_000),
    st.floats(0.5, 60_000),
    st.one_of(st.none(), st.floats(0, 0.5)),
    st.sampled_from(("ok", "ok", "ok", "error", "timeout")),
    st.one_of(st.none(), st.floats(0, 1)),
    st.sampled_from(("summarize", "chat", "agent")),
)
timed_spans = st.lists(st.tuples(span_strategy, st.integers(0, 3 * DAY_MS)), min_size=1, max_size=120)
windows = st.sampled_from((MINUTE_MS, 5 * MINUTE_MS, HOUR_MS, 90 * MINUTE_MS, 6 * HOUR_MS, DAY_MS, 7 * DAY_MS))


def oracle_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


@given(timed_spans, windows, st.sampled_from((None, "model", "caller", "provider", "workflow")))
@settings(max_examples=120, deadline=None)
def test_window_query_matches_recount(data: list[tuple[Span, int]], window_ms: int, groupby: str | None) -> None:
    timeline = Timeline(TimelineSettings(fine_retention_ms=30 * DAY_MS))
    for span, age in data:
        timeline.add(span, NOW - age)
    start, end = timeline.window_start(NOW, window_ms), timeline.window_end(NOW)
    assert end - start == math.ceil(window_ms / MINUTE_MS) * MINUTE_MS
    # Query twice: the second answer comes from the rollup memos and must be identical.
    first = timeline.query(start, end, groupby)
    assert timeline.query(start, end, groupby) == first
    inside = [span for span, age in data if start <= NOW - age < end]

    def group_of(span: Span) -> str:
        if groupby is None:
            return ""
        if groupby in ("model", "caller", "provider"):
            return str(getattr(span, groupby))
        return str(span.attributes[groupby])

    expected_groups = {group_of(s) for s in inside}
    assert set(first) == expected_groups
    for group, aggregate in first.items():
        spans = [s for s in inside if group_of(s) == group]
        assert aggregate.count == len(spans)
        assert aggregate.errors == sum(s.status == "error" for s in spans)
        assert aggregate.timeouts == sum(s.status == "timeout" for s in spans)
        assert aggregate.cost_nanos == sum(to_nanos(s.cost_usd) for s in spans if s.cost_usd is not None)
        assert aggregate.unpriced == sum(s.cost_usd is None for s in spans)
        assert aggregate.prompt_tokens == sum(s.prompt_tokens or 0 for s in spans)
        assert aggregate.comp_tokens == sum(s.comp_tokens or 0 for s in spans)
        latencies = [float(s.latency_ms or 0) for s in spans]
        for q in (0.5, 0.95, 0.99):
            got = aggregate.latency.quantile(q)
            want = oracle_quantile(latencies, q)
            assert got is not None and abs(got - want) <= RELATIVE_ACCURACY * want + 1e-9
        scores = [s.score for s in spans if s.score is not None]
        assert aggregate.score_count == len(scores)
        if scores:
            got_p10 = aggregate.score.quantile(0.10)
            want_p10 = oracle_quantile(scores, 0.10)
            assert got_p10 is not None and abs(got_p10 - want_p10) <= RELATIVE_ACCURACY * abs(want_p10) + 1e-9


@given(timed_spans)
@settings(max_examples=60, deadline=None)
def test_compaction_and_retirement_keep_lifetime_totals(data: list[tuple[Span, int]]) -> None:
    timeline = Timeline(TimelineSettings(fine_retention_ms=6 * HOUR_MS, retention_ms=2 * DAY_MS))
    for span, age in data:
        timeline.add(span, NOW - age)
    before = total(timeline.lifetime())
    timeline.compact(NOW)
    after = total(timeline.lifetime())
    assert after == before
    assert after.count == len(data)
    # Nothing older than retention is still queryable; everything is in the lifetime totals.
    horizon = timeline.oldest_allowed_ms(NOW)
    kept = total(timeline.query(0, timeline.window_end(NOW)))
    assert kept.count == sum(1 for _, age in data if NOW - age >= horizon)


def test_compacted_hours_count_at_their_start() -> None:
    timeline = Timeline(TimelineSettings(fine_retention_ms=HOUR_MS))
    old = NOW - 5 * HOUR_MS
    timeline.add(Span(model="m", prompt_tokens=1), old)
    timeline.compact(NOW)
    hour = old - old % HOUR_MS
    assert total(timeline.query(hour, hour + MINUTE_MS)).count == 1
    assert total(timeline.query(hour + MINUTE_MS, NOW)).count == 0


def test_filters_combine_attribute_and_model() -> None:
    timeline = Timeline()
    timeline.add(Span(model="a", prompt_tokens=1, attributes={"workflow": "x"}), NOW)
    timeline.add(Span(model="b", prompt_tokens=1, attributes={"workflow": "x"}), NOW)
    timeline.add(Span(model="a", prompt_tokens=1, attributes={"workflow": "y"}), NOW)
    start, end = timeline.window_start(NOW, HOUR_MS), timeline.window_end(NOW)
    assert total(timeline.query(start, end, where={"model": "a", "workflow": "x"})).count == 1
    assert total(timeline.query(start, end, where={"model": "a"})).count == 2
    assert timeline.query(start, end, "workflow", {"model": "a"}).keys() == {"x", "y"}


def test_retirement_invalidates_memoised_days() -> None:
    """A day memoised before retirement must not keep counting the buckets retirement removed."""
    timeline = Timeline(TimelineSettings(fine_retention_ms=6 * HOUR_MS, retention_ms=2 * DAY_MS))
    horizon = timeline.oldest_allowed_ms(NOW)
    timeline.add(Span(model="m", prompt_tokens=1), horizon - MINUTE_MS)  # retired by compact()
    timeline.add(Span(model="m", prompt_tokens=1), horizon + MINUTE_MS)  # kept
    everything = (0, timeline.window_end(NOW))
    assert total(timeline.query(*everything)).count == 2  # memoises the day that holds both
    timeline.compact(NOW)
    assert total(timeline.query(*everything)).count == 1
    assert total(timeline.lifetime()).count == 2


@given(timed_spans, timed_spans)
@settings(max_examples=60)
def test_settled_window_memo_sees_late_writes(first: list[tuple[Span, int]], late: list[tuple[Span, int]]) -> None:
    """A long window answered once, then written into anywhere (late data too), answers the new recount."""
    timeline = Timeline(TimelineSettings(fine_retention_ms=30 * DAY_MS))
    start, end = timeline.window_start(NOW, 7 * DAY_MS), timeline.window_end(NOW)
    for span, age in first:
        timeline.add(span, NOW - age)
    assert total(timeline.query(start, end)).count == len(first)
    for span, age in late:
        timeline.add(span, NOW - age)
    assert total(timeline.query(start, end)).count == len(first) + len(late)
    assert timeline.query(start, end, "model") == timeline.query(start, end, "model")


def test_compacted_and_retired_attributes_keep_the_caps() -> None:
    """Each minute keeps at most 3 values of a key; the hours and the retired totals they are folded into
    keep the same caps (the excess under ``__overflow__``), so a new value every minute does not grow them
    without bound, and every span still counts once under its key."""
    caps = Caps(max_attribute_keys=2, max_attribute_values=3)
    timeline = Timeline(TimelineSettings(fine_retention_ms=HOUR_MS, retention_ms=DAY_MS, caps=caps))
    start = NOW - 2 * DAY_MS
    spans = 0
    for minute in range(0, 2 * DAY_MS // MINUTE_MS, 7):
        attributes = {"request": f"r{minute}", f"key{minute % 5}": "x", "workflow": "w"}
        timeline.add(Span(model="m", prompt_tokens=1, attributes=attributes), start + minute * MINUTE_MS)
        spans += 1
    timeline.compact(NOW)
    snapshot = timeline.snapshot()
    for state in [snapshot.retired, *snapshot.coarse.values(), *snapshot.fine.values()]:
        assert len(state.attributes) <= 2
        assert all(len(values - {OVERFLOW}) <= 3 for values in map(set, state.attributes.values()))
    assert total(timeline.lifetime()).count == spans
    by_request = timeline.lifetime("request")  # the first key of every span: kept in every bucket
    assert sum(a.count for a in by_request.values()) == spans
    assert by_request[OVERFLOW].count > 0


@settings(max_examples=60, deadline=None)
@given(timed_spans, timed_spans, st.sampled_from([None, "model", "__series__", "workflow"]))
def test_lifetime_parts_sum_to_lifetime(
    first: list[tuple[Span, int]], late: list[tuple[Span, int]], groupby: str | None
) -> None:
    """The parts the Prometheus scrape sums in a thread equal ``lifetime``, whichever memos are fresh or stale,
    and the parts gathered before later writes and a compaction are not changed by them."""
    timeline = Timeline(TimelineSettings(fine_retention_ms=6 * HOUR_MS, retention_ms=2 * DAY_MS))
    for span, offset in first:
        timeline.add(span, NOW - offset)
    timeline.query(NOW - 3 * DAY_MS, NOW + MINUTE_MS, groupby)  # memoises days, hours and buckets
    assert timeline.lifetime_parts(groupby).total() == timeline.lifetime(groupby)
    before = timeline.lifetime_parts(groupby)
    expected = before.total()
    for span, offset in late:
        timeline.add(span, NOW - offset % (2 * DAY_MS))
    timeline.compact(NOW)
    assert before.total() == expected  # nothing gathered was changed afterwards
    before.install()  # its settled blocks, if not written since
    parts = timeline.lifetime_parts(groupby)
    assert parts.total() == timeline.lifetime(groupby)
    parts.install()
    again = timeline.lifetime_parts(groupby)
    assert not again.builds  # what the last call summed is memoised now
    assert again.total() == timeline.lifetime(groupby)


@settings(max_examples=60, deadline=None)
@given(
    timed_spans,
    timed_spans,
    st.sampled_from([MINUTE_MS, HOUR_MS, 6 * HOUR_MS, DAY_MS, 3 * DAY_MS]),
    st.sampled_from([None, "model", "caller", "workflow"]),
    st.sampled_from([{}, {"model": "gpt-4o"}, {"workflow": "chat"}]),
)
def test_query_parts_sum_to_query(
    first: list[tuple[Span, int]],
    late: list[tuple[Span, int]],
    window_ms: int,
    groupby: str | None,
    where: dict[str, str],
) -> None:
    """What ``/metrics`` sums in a thread equals ``query``, with the settled window's memo fresh, stale or
    installed from an earlier build."""
    timeline = Timeline(TimelineSettings(fine_retention_ms=30 * DAY_MS))
    for span, offset in first:
        timeline.add(span, NOW - offset)
    end = timeline.window_end(NOW)
    start = timeline.window_start(NOW, window_ms)
    parts = timeline.query_parts(start, end, groupby, where)
    assert parts.total() == timeline.query(start, end, groupby, where)
    for span, offset in late:
        timeline.add(span, NOW - offset)
    parts.install()  # stale now: must not be taken
    again = timeline.query_parts(start, end, groupby, where)
    assert again.total() == timeline.query(start, end, groupby, where)
    again.install()
    assert timeline.query_parts(start, end, groupby, where).total() == timeline.query(start, end, groupby, where)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.tuples(span_strategy, st.integers(0, 3 * HOUR_MS)), max_size=12), min_size=1, max_size=5),
    st.sampled_from([10_000, MINUTE_MS, 5 * MINUTE_MS]),
    st.sampled_from([MINUTE_MS, 5 * MINUTE_MS, HOUR_MS, 90 * MINUTE_MS, 6 * HOUR_MS]),
    st.sampled_from([None, "model", "workflow"]),
    st.integers(0, 3 * MINUTE_MS),
    st.integers(0, HOUR_MS),
    st.sampled_from([None, HOUR_MS, DAY_MS]),
)
def test_window_memos_follow_every_write(
    rounds: list[list[tuple[Span, int]]],
    bucket_ms: int,
    window_ms: int,
    groupby: str | None,
    step_ms: int,
    past_the_hour: int,
    compact_fine_ms: int | None,
) -> None:
    """Rounds of writes (late ones into any bucket of the last 3 hours), each followed by the query ``/metrics``
    makes twice (parts summed, then installed: the second reads what the first memoised) at a now that moves on,
    across an hour too, compacting (minutes folded into hours) or not: every answer equals a fresh timeline's over
    the same spans (no memo of it stale) and a recount."""
    config = TimelineSettings(bucket_ms=bucket_ms, fine_retention_ms=compact_fine_ms or DAY_MS)
    timeline = Timeline(config)
    written: list[tuple[Span, int]] = []
    now = NOW - NOW % HOUR_MS + past_the_hour
    for spans in rounds:
        for span, age in spans:
            timeline.add(span, now - age)
            written.append((span, now - age))
        if compact_fine_ms is not None:
            timeline.compact(now)
        start, end = timeline.window_start(now, window_ms), timeline.window_end(now)
        recount = Timeline(config)
        for span, at in written:
            recount.add(span, at)
        if compact_fine_ms is not None:
            recount.compact(now)
        expected = recount.query(start, end, groupby)
        if compact_fine_ms is None:  # else a folded hour counts where it starts, wholly in or out of the window
            assert sum(a.count for a in expected.values()) == sum(1 for _, at in written if start <= at < end)
        for _ in range(2):
            parts = timeline.query_parts(start, end, groupby)
            assert parts.total() == expected
            parts.install()
        assert timeline.query(start, end, groupby) == expected
        now += step_ms


def test_bucket_memos_are_bounded_by_groups_and_the_lifetime_keeps_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recent buckets' projections are kept up to ``_BUCKET_MEMO_GROUPS`` groups in all (a bucket by caller can
    hold thousands), the answers unchanged; the lifetime's parts (a scrape by series) memoise none."""
    monkeypatch.setattr(timeline_module, "_BUCKET_MEMO_GROUPS", 10)
    timeline = Timeline()
    for minute in range(5):
        for model in range(6):
            timeline.add(Span(model=f"m{model}", prompt_tokens=1), NOW - minute * MINUTE_MS)
    lifetime = timeline.lifetime_parts(SERIES)
    assert sum(a.count for a in lifetime.total().values()) == 30
    lifetime.install()
    assert timeline.cache_stats().bucket_memos == 0
    start, end = timeline.window_start(NOW, 10 * MINUTE_MS), timeline.window_end(NOW)
    for _ in range(2):
        parts = timeline.query_parts(start, end, "model")
        assert {model: a.count for model, a in parts.total().items()} == {f"m{m}": 5 for m in range(6)}
        parts.install()
        assert timeline.cache_stats().bucket_memos == 1  # 6 groups each: a second would pass 10


def test_a_window_memo_sees_its_newest_hour_replaced() -> None:
    """A replica's copy replaces the hour the memoised part of a window ends in (``replace_hour``: a compacted hour
    counts where it starts): the next answer counts it."""
    now = NOW - NOW % HOUR_MS + 40 * MINUTE_MS
    timeline = Timeline()
    timeline.add(Span(model="m", prompt_tokens=1), now - 30 * MINUTE_MS)
    start, end = timeline.window_start(now, 90 * MINUTE_MS), timeline.window_end(now)
    parts = timeline.query_parts(start, end)
    assert total(parts.total()).count == 1
    parts.install()
    hour = BucketState()
    for _ in range(3):
        hour.add(Span(model="m", prompt_tokens=1), Caps())
    timeline.replace_hour(now - now % HOUR_MS, hour)
    assert total(timeline.query_parts(start, end).total()).count == 4
    assert total(timeline.query(start, end)).count == 4


@given(timed_spans, st.sampled_from([MINUTE_MS, HOUR_MS, DAY_MS, 30 * DAY_MS]), st.sampled_from([None, "model"]))
@settings(max_examples=30, deadline=None)
def test_an_unchanged_window_is_summed_once(spans: list[tuple[Span, int]], window_ms: int, groupby: str | None) -> None:
    """Asked again with nothing written, a window is its memo and the projections of its recent buckets, nothing
    left to decode or project: ``/metrics?window=1h`` over a restored month decoded and projected its 60 frozen
    minutes on every request (35 ms)."""
    timeline = Timeline(TimelineSettings(fine_retention_ms=30 * DAY_MS))
    for span, age in spans:
        timeline.add(span, NOW - age)
    timeline.restore(timeline.snapshot())  # frozen buckets, as a restart loads them
    start, end = timeline.window_start(NOW, window_ms), timeline.window_end(NOW)
    first = timeline.query_parts(start, end, groupby)
    expected = first.total()
    first.install()
    again = timeline.query_parts(start, end, groupby)
    assert again.window is None and not again.builds
    assert all(isinstance(part, dict) for part in again.parts)
    assert again.total() == expected


_KEY_POOL = tuple(f"k{i}" for i in range(6))


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3 * DAY_MS),
            st.dictionaries(st.sampled_from(_KEY_POOL), st.one_of(st.text(max_size=2), st.integers(0, 3), st.floats())),
        ),
        max_size=80,
    ),
    windows,
    st.integers(1, 6),
    st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_attribute_keys_are_the_keys_a_groupby_finds(
    data: list[tuple[int, dict[str, object]]], window_ms: int, max_keys: int, compact: bool
) -> None:
    """Oracle: a key is offered exactly when grouping the window by it finds a group (caps, floats, compacted
    hours and retention included), and only keys some span of the window carried."""
    settings_ = TimelineSettings(
        fine_retention_ms=DAY_MS, retention_ms=2 * DAY_MS, caps=Caps(max_attribute_keys=max_keys)
    )
    timeline = Timeline(settings_)
    for age, attributes in data:
        timeline.add(Span(model="m", prompt_tokens=1, attributes=attributes), NOW - age)
    if compact:
        timeline.compact(NOW)
    start, end = timeline.window_start(NOW, window_ms), timeline.window_end(NOW)
    keys = timeline.attribute_keys(start, end)
    assert keys == {key for key in _KEY_POOL if timeline.query(start, end, key)}
    carried = {k for age, attributes in data if start <= NOW - age < end for k in attributes}
    assert keys <= carried
