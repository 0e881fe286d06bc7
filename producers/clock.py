"""Wall-clock timestamps for spans, formatted like ``timefmt.format_ms`` but cached per second.

``format_ms`` calls ``time.strftime`` every time (~3 µs on a slow core); spans recorded within the same
second share the ``YYYY-MM-DDTHH:MM:SS`` prefix, so only the milliseconds are formatted per span.
"""

from __future__ import annotations

import time

from tokentrace.core.timefmt import format_ms

__all__ = ["now_ms", "stamp"]

# (second, "YYYY-MM-DDTHH:MM:SS") of the last formatted timestamp; replaced as a whole, so thread-safe.
_last: tuple[int, str] = (-1, "")


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def stamp(epoch_ms: int) -> str:
    """Exactly ``format_ms(epoch_ms)``: ``2026-03-15T14:23:01.441Z``."""
    global _last
    seconds, millis = divmod(epoch_ms, 1000)
    cached_second, prefix = _last
    if seconds != cached_second:
        prefix = format_ms(seconds * 1000)[:-5]
        _last = (seconds, prefix)
    return f"{prefix}.{millis:03d}Z"
