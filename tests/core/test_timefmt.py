"""Timestamps and durations: the cached fast paths agree with the general parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokentrace.core.timefmt import format_duration, format_ms, parse_duration, parse_rfc3339_ms

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
