"""Timestamps and durations as they appear on the wire.

Timestamps are RFC 3339 in UTC with millisecond precision (``2026-03-15T14:23:01.441Z``), the form
every JSON answer uses. Durations are Go duration strings (``90m``, ``1h30m``, ``1.5h``, ``250ms``) plus the
day suffix ``window`` parameters use (``7d``, ``30d``).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from tokentrace.core import native

__all__ = [
    "MAX_DURATION_S",
    "clear_caches",
    "format_duration",
    "format_ms",
    "normalize_rfc3339",
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
    seconds part is parsed once and cached; and a span's timestamps are read several times on their way in
    (validation, stamping, bucketing, the trace index), so the latest ones are remembered whole.
    """
    canonical = _canonical_ms
    if canonical is not None:
        millis = canonical(text)
        if millis is not None:
            return millis
    millis = _RECENT.get(text)
    if millis is not None:
        return millis
    if len(text) == 24 and text[23] == "Z" and text[19] == ".":
        part = _MILLIS.get(text[20:23])
        if part is not None:
            seconds = _SECONDS.get(text[:19])
            if seconds is None:
                seconds = _parse_any(text) // 1000
                if len(_SECONDS) >= _CACHE_LIMIT:
                    _SECONDS.clear()
                _SECONDS[text[:19]] = seconds
            return _remember(text, seconds * 1000 + part)
    return _parse_any(text)


def normalize_rfc3339(text: str) -> tuple[str, int]:
    """``(format_ms(millis), millis)`` for an RFC 3339 timestamp; raises ValueError as ``parse_rfc3339_ms``.

    A timestamp already in the normalised form is returned as it is (the same object, no formatting): its
    seconds part is recognised in the cache of prefixes ``format_ms`` has produced.
    """
    canonical = _canonical_ms
    if canonical is not None:
        millis = canonical(text)
        if millis is not None:
            return text, millis
    if len(text) == 24 and text[23] == "Z" and text[19] == ".":
        seconds = _CANONICAL.get(text[:19])
        millis = _MILLIS.get(text[20:23])
        if seconds is not None and millis is not None:
            return text, _remember(text, seconds * 1000 + millis)
    millis = parse_rfc3339_ms(text)
    return format_ms(millis), millis


#: Epoch ms of a normalised timestamp from 1970 on (else None), compiled (tokentrace/core/native.py), or None.
_canonical_ms = native.canonical_ms
#: Seconds part -> epoch seconds, for any seconds part the fast path parsed.
_SECONDS: dict[str, int] = {}
#: Epoch seconds -> normalised seconds part, and the reverse (only normalised parts, as format_ms made them).
_PREFIXES: dict[int, str] = {}
_CANONICAL: dict[str, int] = {}
_CACHE_LIMIT = 65_536
#: The latest normalised timestamps parsed or formatted -> epoch ms.
_RECENT: dict[str, int] = {}
_RECENT_LIMIT = 16_384
#: The three millisecond digits -> their value, and millis -> ``.mmmZ`` (ASCII digits only).
_MILLIS = {f"{i:03d}": i for i in range(1000)}
_SUFFIXES = tuple(f".{i:03d}Z" for i in range(1000))


def clear_caches() -> None:
    """Forget every timestamp parsed or formatted so far; the caches refill as timestamps come. For giving their
    memory back, and for measuring parsing and formatting as a server does, which sees each timestamp once."""
    for cache in (_SECONDS, _PREFIXES, _CANONICAL, _RECENT):
        cache.clear()


def _remember(text: str, millis: int) -> int:
    if len(_RECENT) >= _RECENT_LIMIT:
        _RECENT.clear()
    _RECENT[text] = millis
    return millis


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
            _CANONICAL.clear()
        prefix = _PREFIXES[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _CANONICAL[prefix] = seconds
    text = prefix + _SUFFIXES[millis]
    if len(text) == 24:  # the normalised form (years 1000 to 9999): parsing it gives epoch_ms back
        _remember(text, epoch_ms)
    return text


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
