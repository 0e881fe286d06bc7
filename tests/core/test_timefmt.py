"""Timestamps and durations: the cached fast paths agree with the general parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokentrace.core import timefmt
from tokentrace.core.timefmt import (
    clear_caches,
    format_duration,
    format_ms,
    normalize_rfc3339,
    parse_duration,
    parse_rfc3339_ms,
)

instants = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC)
)


@given(instants)
def test_format_and_parse_round_trip(instant: datetime) -> None:
    millis = int(instant.timestamp() * 1000 + 0.5)
    text = format_ms(millis)
    assert text == instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"
    assert parse_rfc3339_ms(text) == millis
    assert parse_rfc3339_ms(text) == parse_rfc3339_ms(instant.isoformat())  # fast path = general path


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("2026-03-15T14:23:01.441Z", 1773584581441),
        ("2026-03-15T14:23:01.441+00:00", 1773584581441),
        ("2026-03-15T16:23:01.441+02:00", 1773584581441),
        ("2026-03-15T14:23:01Z", 1773584581000),
        ("2026-03-15T14:23:01.441999Z", 1773584581441),
        ("2026-03-15T14:23:01", 1773584581000),
    ],
)
def test_accepted_forms(text: str, millis: int) -> None:
    assert parse_rfc3339_ms(text) == millis


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01T00:00:00.000Z", "2026-03-15T14:23:01.4x1Z", ""])
def test_rejected_forms(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339_ms(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("90m", 5400), ("1h30m", 5400), ("1.5h", 5400), ("7d", 604800), ("250ms", 0.25), ("2h45m30s", 9930)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1x", "-1h", "0s", "h", "1h30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (3600, 5400, 45, 604800, 0.25, 86400)] == [
        "1h",
        "1h30m",
        "45s",
        "7d",
        "250ms",
        "24h",
    ]
    assert timedelta(seconds=parse_duration(format_duration(5400))) == timedelta(minutes=90)


def _general(text: str) -> int:
    """The general parser alone (no cache, no fast path)."""
    parsed = datetime.fromisoformat(text)
    parsed = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return int(parsed.replace(microsecond=0).timestamp()) * 1000 + parsed.microsecond // 1000


def _forms(instant: datetime) -> list[str]:
    text = format_ms(int(instant.timestamp() * 1000 + 0.5))
    return [text, text.replace("T", " "), text[:19] + "Z", text[:23] + "+02:00", text[:23], text[:20] + "4x1Z"]


@given(instants, st.integers(0, 5), st.integers(0, 5))
def test_normalize_is_format_of_parse_whatever_was_cached(instant: datetime, first: int, second: int) -> None:
    """The fast paths (seconds parts cached by any earlier form, remembered timestamps) never change an answer."""
    for text in (_forms(instant)[first], _forms(instant)[second], _forms(instant + timedelta(milliseconds=1))[second]):
        try:
            millis = _general(text)
        except ValueError:
            with pytest.raises(ValueError, match="RFC 3339"):
                normalize_rfc3339(text)
            continue
        assert normalize_rfc3339(text) == (format_ms(millis), millis)
        assert parse_rfc3339_ms(text) == millis


def test_a_seconds_part_cached_from_another_form_is_still_normalised() -> None:
    assert parse_rfc3339_ms("2026-03-15 14:23:01.441Z") == 1773584581441  # caches "2026-03-15 14:23:01"
    assert normalize_rfc3339("2026-03-15 14:23:01.442Z") == ("2026-03-15T14:23:01.442Z", 1773584581442)


def test_non_ascii_digits_take_the_general_path() -> None:
    format_ms(1773584581441)  # the seconds part is cached
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339_ms("2026-03-15T14:23:01.\u0661\u0662\u0663Z")


def test_clear_caches_forgets_every_timestamp_and_changes_no_answer() -> None:
    text = format_ms(1773584581441)  # caches its seconds part both ways, and remembers it whole
    assert parse_rfc3339_ms("2026-03-15 14:23:02.000Z") == 1773584582000  # caches a seconds part parsed
    caches = (timefmt._SECONDS, timefmt._PREFIXES, timefmt._CANONICAL, timefmt._RECENT)
    assert all(caches)
    clear_caches()
    assert not any(caches)
    assert normalize_rfc3339(text) == (text, 1773584581441)
    assert parse_rfc3339_ms("2026-03-15 14:23:02.000Z") == 1773584582000
    assert format_ms(1773584581441) == text
