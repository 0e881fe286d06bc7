"""Wall-clock timestamps for spans, formatted like ``timefmt.format_ms`` but cached per second.

``format_ms`` calls ``time.strftime`` every time (~3 µs on a slow core); spans recorded within the same
second share the ``YYYY-MM-DDTHH:MM:SS`` prefix, so only the milliseconds are formatted per span. A few
recent seconds are cached, since a span's start (now minus its latency) is often in an earlier second.
"""

from __future__ import annotations

import time

from tokentrace.core.timefmt import format_ms

__all__ = ["now_ms", "stamp"]

# second -> "YYYY-MM-DDTHH:MM:SS"; dict reads and writes are atomic, so this is thread-safe.
_prefixes: dict[int, str] = {}
_MAX_CACHED = 256
# millisecond -> ".mmmZ" (a list index and a concatenation are three times cheaper than formatting)
_SUFFIXES = [f".{millis:03d}Z" for millis in range(1000)]


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def stamp(epoch_ms: int) -> str:
    """Exactly ``format_ms(epoch_ms)``: ``2026-03-15T14:23:01.441Z``."""
    prefix = _prefixes.get(epoch_ms // 1000)
    if prefix is None:
        if len(_prefixes) >= _MAX_CACHED:
            _prefixes.clear()
        prefix = _prefixes[epoch_ms // 1000] = format_ms(epoch_ms - epoch_ms % 1000)[:-5]
    return prefix + _SUFFIXES[epoch_ms % 1000]
