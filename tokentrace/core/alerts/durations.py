"""Duration fields of rules and deliveries: Go duration text (``30m``) or a number of seconds."""

from __future__ import annotations

import math
from functools import lru_cache

from tokentrace.core.timefmt import MAX_DURATION_S, format_duration, parse_duration

__all__ = ["duration_text", "seconds"]


def duration_text(value: object, field: str) -> str:
    """Validate a duration field and return its text form (numbers are seconds: ``90`` → ``1m30s``).

    Raises ValueError whose message starts with ``field``.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{field}: expected a duration such as 30m or 1h, got {value!r}")
    if isinstance(value, str):
        try:
            parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        return value.strip()
    if not math.isfinite(value) or not 0.001 <= value <= MAX_DURATION_S:
        raise ValueError(f"{field}: must be a number of seconds between 0.001 and {MAX_DURATION_S}, got {value!r}")
    if float(value).is_integer():
        return format_duration(float(value))
    return f"{round(value * 1000)}ms"


@lru_cache(maxsize=4096)
def seconds(text: str) -> float:
    """Seconds of a duration text already validated by :func:`duration_text` (cached)."""
    return parse_duration(text)
