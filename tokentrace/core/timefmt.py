"""Timestamps and durations as they appear on the wire.

Timestamps are RFC 3339 in UTC with millisecond precision (``2026-03-15T14:23:01.441Z``), the form
spec 004 shows. Durations are Go duration strings (``90m``, ``1h30m``, ``1.5h``, ``250ms``) plus the
day suffix the spec's windows use (``7d``, ``30d``).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

__all__ = [
    "MAX_DURATION_S",
    "format_duration",
    "format_ms",
    "now_ms",
    "parse_duration",
    "parse_rfc3339_ms",
]

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
#: Longest duration accepted anywhere (windows, silences, retention): ten years.
MAX_DURATION_S = 10 * 366 * 86400
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")


def now_ms() -> int:
    """Wall-clock time as integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def parse_rfc3339_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp to epoch milliseconds. A timestamp without offset is taken as UTC.

    Raises ValueError with a message naming the expected form. The normalised form that spans carry
    (``YYYY-MM-DDTHH:MM:SS.mmmZ``) takes a fast path: spans of a batch share their seconds, so the
    seconds part is parsed once and cached.
    """
    if len(text) == 24 and text[23] == "Z" and text[19] == "." and text[20:23].isdigit():
        seconds = _SECONDS.get(text[:19])
        if seconds is None:
            seconds = _parse_any(text) // 1000
            if len(_SECONDS) >= _CACHE_LIMIT:
                _SECONDS.clear()
            _SECONDS[text[:19]] = seconds
        return seconds * 1000 + int(text[20:23])
    return _parse_any(text)


_SECONDS: dict[str, int] = {}
_PREFIXES: dict[int, str] = {}
_CACHE_LIMIT = 65_536


def _parse_any(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}, expected e.g. 2026-03-15T14:23:01.441Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Integer arithmetic avoids float rounding of the millisecond part.
    whole = int(parsed.replace(microsecond=0).timestamp())
    return whole * 1000 + parsed.microsecond // 1000


def format_ms(epoch_ms: int) -> str:
    """Format epoch milliseconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (the seconds part cached)."""
    seconds, millis = divmod(epoch_ms, 1000)
    prefix = _PREFIXES.get(seconds)
    if prefix is None:
        if len(_PREFIXES) >= _CACHE_LIMIT:
            _PREFIXES.clear()
        prefix = _PREFIXES[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{prefix}.{millis:03d}Z"


def parse_duration(text: str) -> float:
    """Parse a Go duration string (or ``Nd`` days) to seconds; must be positive.

    Raises ValueError whose message says what is accepted.
    """
    raw = text.strip()
    pos = 0
    total = 0.0
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not raw or pos != len(raw):
        raise ValueError(f"invalid duration {text!r}: use 1h, 6h, 24h, 7d, 30d or a Go duration such as 90m or 1h30m")
    if total <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    if total > MAX_DURATION_S:
        raise ValueError(f"invalid duration {text!r}: must be at most 10 years")
    return total


def format_duration(seconds: float) -> str:
    """Format seconds compactly: ``1h``, ``1h30m``, ``45s``, ``7d``, ``250ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    if whole % 86400 == 0 and whole >= 2 * 86400:
        return f"{whole // 86400}d"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)
