"""The tiering rules (tokentrace/core/tiers.py) against a brute-force reading of their definitions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokentrace.core.tiers import HOUR_MS, NEVER, Fate, Tiers, hour_of, tiers_at
from tokentrace.core.timeline import MINUTE_MS, Timeline, TimelineSettings

NOW = st.integers(min_value=40 * 86_400_000, max_value=2**45)
RETENTIONS = st.tuples(st.integers(1, 96), st.integers(0, 24 * 40)).map(
    lambda t: (t[0] * HOUR_MS, (t[0] + t[1]) * HOUR_MS)
)


@given(NOW, RETENTIONS)
def test_cut_points_are_whole_hours_where_the_timeline_puts_them(now: int, retentions: tuple[int, int]) -> None:
    fine, retention = retentions
    tiers = tiers_at(now, fine, retention)
    assert tiers.fine_cutoff_ms % HOUR_MS == 0 and tiers.horizon_ms % HOUR_MS == 0
    # The fine cutoff is the last hour boundary at or before now - fine retention; the horizon the first after
    # now - retention (a bucket starting exactly there is already past retention).
    assert tiers.fine_cutoff_ms <= now - fine < tiers.fine_cutoff_ms + HOUR_MS
    assert tiers.horizon_ms - HOUR_MS <= now - retention < tiers.horizon_ms
    timeline = Timeline(TimelineSettings(fine_retention_ms=fine, retention_ms=retention))
    assert timeline.oldest_allowed_ms(now) == tiers.horizon_ms


@given(NOW, RETENTIONS, st.integers(min_value=0, max_value=60 * 24 * 45), st.booleans())
def test_fate_follows_the_rules_and_never_splits_an_hour(
    now: int, retentions: tuple[int, int], minutes_back: int, is_hour: bool
) -> None:
    tiers = tiers_at(now, *retentions)
    start = now - now % MINUTE_MS - minutes_back * MINUTE_MS
    if is_hour:
        start = hour_of(start)
    fate = tiers.fate(start, is_hour=is_hour)
    if start < tiers.horizon_ms:
        assert fate is Fate.RETIRE
    elif not is_hour and start < tiers.fine_cutoff_ms:
        assert fate is Fate.FOLD
    else:
        assert fate is Fate.KEEP
    # Every minute of an hour shares its fate, and the hour bucket the fate of its minutes (but folding).
    hour = hour_of(start)
    minutes = {tiers.fate(m, is_hour=False) for m in range(hour, hour + HOUR_MS, MINUTE_MS)}
    assert len(minutes) == 1
    assert tiers.fate(hour, is_hour=True) is (Fate.KEEP if minutes == {Fate.FOLD} else minutes.pop())


def test_a_minute_beside_its_hour_does_not_count_nor_anything_retired() -> None:
    tiers = Tiers(fine_cutoff_ms=NEVER, horizon_ms=10 * HOUR_MS)
    minute = 12 * HOUR_MS + 5 * MINUTE_MS
    assert tiers.counts(minute, is_hour=False, hours=())
    assert not tiers.counts(minute, is_hour=False, hours={12 * HOUR_MS})
    assert tiers.counts(minute, is_hour=False, hours={11 * HOUR_MS, 13 * HOUR_MS})
    assert tiers.counts(12 * HOUR_MS, is_hour=True, hours={12 * HOUR_MS})
    assert not tiers.counts(9 * HOUR_MS, is_hour=True, hours=())
    assert not tiers.counts(10 * HOUR_MS - MINUTE_MS, is_hour=False, hours=())
