"""Cutting a metrics window into chart intervals.

``GET /metrics/series`` answers the same window as ``GET /metrics`` (whole buckets, ending with the bucket
that holds "now"), cut at multiples of ``step`` since the epoch, so the intervals stay put while the window
slides and a refreshing chart does not re-bin its history. The first and last intervals are clipped to the
window: their counts are those of the window's part of them, so the intervals' counts and costs add up to
``/metrics`` exactly (integer sums over a partition of the same buckets).
"""

from __future__ import annotations

__all__ = ["MAX_POINTS", "intervals", "validate_step"]

#: The most intervals one answer holds.
MAX_POINTS = 1000


def validate_step(step_ms: int, bucket_ms: int) -> None:
    """ValueError unless ``step_ms`` is a positive whole number of buckets."""
    if step_ms <= 0 or step_ms % bucket_ms:
        raise ValueError(f"must be a whole number of buckets ({bucket_ms // 1000}s each)")


def intervals(start_ms: int, end_ms: int, step_ms: int) -> list[tuple[int, int]]:
    """``[start_ms, end_ms)`` cut at multiples of ``step_ms``: ``(start, end)`` pairs in time order.

    ValueError if there would be more than ``MAX_POINTS``.
    """
    first = start_ms - start_ms % step_ms
    count = -(-(end_ms - first) // step_ms)
    if count > MAX_POINTS:
        raise ValueError(f"{count} intervals; at most {MAX_POINTS} (use a longer step or a shorter window)")
    return [(max(s, start_ms), min(s + step_ms, end_ms)) for s in range(first, end_ms, step_ms)]
