"""A mergeable quantile sketch with bounded relative error (DDSketch).

The bucketing is ddsketch's ``LogarithmicMapping``: a value ``v > 0`` falls in bucket
``ceil(log_gamma(v))`` and every value in a bucket is within ``RELATIVE_ACCURACY`` of the bucket's
representative value. Counts are kept in a sparse ``dict`` (ddsketch's own stores are dense lists with
no compact codec), so a sketch encodes to a few hundred bytes with msgspec and merges by adding counts —
exactly, in any order. Exact ``min``/``max`` bound every answer.

Quantile ``q`` returns a value within ``RELATIVE_ACCURACY`` of the sorted sample at index
``floor(q * (n - 1))``; values ``<= 0`` are kept exactly in their own counts (``0`` and negatives
mirrored into a second store).
"""

from __future__ import annotations

import math

import msgspec
from ddsketch.mapping import LogarithmicMapping

__all__ = ["RELATIVE_ACCURACY", "Sketch"]

#: Worst-case relative error of any quantile answer.
RELATIVE_ACCURACY = 0.01
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_value = _MAPPING.value
# The mapping's own key() inlined for the hot path (same formula: ceil(log2(v) * multiplier) + offset).
_MULTIPLIER = _MAPPING._multiplier
_OFFSET = _MAPPING._offset
_log2 = math.log2
_ceil = math.ceil


def _key(value: float) -> int:
    return int(_ceil(_log2(value) * _MULTIPLIER) + _OFFSET)


class Sketch(msgspec.Struct, array_like=True):
    """Counts of values per logarithmic bucket; add, merge, quantile."""

    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    positive: dict[int, int] = {}
    negative: dict[int, int] = {}
    zeros: int = 0

    def add(self, value: float) -> None:
        """Record one value."""
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value > 0:
            key = int(_ceil(_log2(value) * _MULTIPLIER) + _OFFSET)
            bins = self.positive
        elif value < 0:
            key = _key(-value)
            bins = self.negative
        else:
            self.zeros += 1
            return
        bins[key] = bins.get(key, 0) + 1

    def merge(self, other: Sketch) -> None:
        """Add ``other``'s values to this sketch (commutative and associative)."""
        if not other.count:
            return
        self.count += other.count
        self.zeros += other.zeros
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        for mine, theirs in ((self.positive, other.positive), (self.negative, other.negative)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n

    def copy(self) -> Sketch:
        """An independent copy."""
        return Sketch(self.count, self.min, self.max, dict(self.positive), dict(self.negative), self.zeros)

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` in [0, 1], or None for an empty sketch."""
        if not self.count:
            return None
        if q <= 0:
            return self.min
        if q >= 1:
            return self.max
        rank = q * (self.count - 1)
        seen = 0
        for key in sorted(self.negative, reverse=True):
            seen += self.negative[key]
            if seen > rank:
                return self._clamp(-_value(key))
        seen += self.zeros
        if seen > rank:
            return 0.0
        for key in sorted(self.positive):
            seen += self.positive[key]
            if seen > rank:
                return self._clamp(_value(key))
        return self.max

    def _clamp(self, value: float) -> float:
        return min(max(value, self.min), self.max)
