"""Bucket tiering: in which of the three tiers a bucket's spans count at a given time. Pure.

Spans count in minute buckets (the bucket size, one minute by default); older ones in hour buckets; the oldest
in one retired total per series (lifetime counters never go down). The rules, the same for the embedded
timeline, the workers' tables and the Redis view's readers:

1. A minute bucket that starts before the **fine cutoff** — ``fine_retention`` before now, down to its hour —
   is folded into its hour bucket.
2. A bucket (minute or hour) that starts before the **horizon** — ``retention`` before now, up to the next
   hour — is retired: its spans count in the retired total only, and spans for it are refused as too old.
3. An hour bucket, once it exists, counts every span of its hour: a minute bucket of that hour beside it is a
   leftover (a crash between the hour's write and the minutes' deletions, or a stalled former owner writing
   late) and is hidden, never counted twice.

Both cut points are whole hours, so a fold or a retirement never splits an hour.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from enum import Enum

__all__ = ["HOUR_MS", "NEVER", "Fate", "Tiers", "hour_of", "tiers_at"]

HOUR_MS = 3_600_000
#: A cut point no bucket starts before (a pass that only folds, or only retires).
NEVER = -(2**62)


class Fate(Enum):
    """What a pass of compaction does with a bucket."""

    KEEP = "keep"
    FOLD = "fold"  # a minute bucket into its hour
    RETIRE = "retire"  # into the retired total


def hour_of(start_ms: int) -> int:
    """The start of the hour ``start_ms`` falls in."""
    return start_ms - start_ms % HOUR_MS


@dataclass(frozen=True, slots=True)
class Tiers:
    """The two cut points at one moment (both hour-aligned)."""

    #: Minute buckets starting before this fold into their hours (rule 1).
    fine_cutoff_ms: int
    #: Buckets starting before this are retired; spans for them are too old (rule 2).
    horizon_ms: int

    def fate(self, start_ms: int, *, is_hour: bool) -> Fate:
        """Rules 1 and 2 for the bucket starting at ``start_ms`` (an hour bucket if ``is_hour``)."""
        if start_ms < self.horizon_ms:
            return Fate.RETIRE
        if not is_hour and start_ms < self.fine_cutoff_ms:
            return Fate.FOLD
        return Fate.KEEP

    def counts(self, start_ms: int, *, is_hour: bool, hours: Container[int]) -> bool:
        """Whether a stored bucket still counts where it is, given the hour buckets stored beside it: not
        retired (rule 2), and, for a minute, no hour bucket of its hour (rule 3)."""
        return start_ms >= self.horizon_ms and (is_hour or hour_of(start_ms) not in hours)


def tiers_at(now_ms: int, fine_retention_ms: int, retention_ms: int) -> Tiers:
    """The cut points at ``now_ms``: the fine cutoff down to its hour, the horizon up to the next hour."""
    cutoff = now_ms - fine_retention_ms
    horizon = now_ms - retention_ms
    return Tiers(fine_cutoff_ms=hour_of(cutoff), horizon_ms=hour_of(horizon) + HOUR_MS)
