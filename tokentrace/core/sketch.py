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
from collections.abc import Iterable, Sequence

import msgspec
from ddsketch.mapping import LogarithmicMapping

from tokentrace.core.compat import IncompatibleLibrary

__all__ = ["MULTIPLIER", "OFFSET", "RELATIVE_ACCURACY", "Sketch"]

#: Worst-case relative error of any quantile answer.
RELATIVE_ACCURACY = 0.01
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_value = _MAPPING.value
# The mapping's own key() inlined for the hot path (same formula: ceil(log2(v) * multiplier) + offset), from its
# private constants: the one place tokentrace reads ddsketch internals (tests/core/test_sketch.py checks the formula
# against the mapping's key() for the installed release).
try:
    MULTIPLIER: float = _MAPPING._multiplier
    OFFSET: float = _MAPPING._offset
except AttributeError:
    raise IncompatibleLibrary("ddsketch", "LogarithmicMapping has no _multiplier/_offset", ">=3.0,<4") from None
_log2 = math.log2
_ceil = math.ceil


def _key(value: float) -> int:
    return int(_ceil(_log2(value) * MULTIPLIER) + OFFSET)


class Sketch(msgspec.Struct, array_like=True, gc=False):
    """Counts of values per logarithmic bucket; add, merge, quantile.

    ``gc=False`` as for ``Aggregate``: numbers and two dicts of ints cannot form a cycle.
    """

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
            key = int(_ceil(_log2(value) * MULTIPLIER) + OFFSET)
            bins = self.positive
        elif value < 0:
            key = _key(-value)
            bins = self.negative
        else:
            self.zeros += 1
            return
        bins[key] = bins.get(key, 0) + 1

    def add_many(self, values: Sequence[float]) -> None:
        """Record several values (not NaN): the same sketch as ``add`` for each in order, bins included."""
        count = len(values)
        if count <= 1:
            if count:
                self.add(values[0])
            return
        self.count += count
        low, high = min(values), max(values)  # the first of equal extremes, as add keeps it
        if low < self.min:
            self.min = low
        if high > self.max:
            self.max = high
        if low > 0:
            _count_keys(self.positive, values)
            return
        positive = [v for v in values if v > 0]
        negative = [-v for v in values if v < 0]
        self.zeros += count - len(positive) - len(negative)
        _count_keys(self.positive, positive)
        _count_keys(self.negative, negative)

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


def _count_keys(bins: dict[int, int], values: Iterable[float]) -> None:
    """Count each of ``values`` (all > 0) in its key's bin; new keys are inserted in first-seen order, as
    ``Sketch.add`` inserts them."""
    if OFFSET == 0.0:
        # The keys of _key, computed at C speed: ceil() is an int already and adding 0.0 changes nothing.
        keys: Iterable[int] = map(_ceil, map(MULTIPLIER.__mul__, map(_log2, values)))
    else:
        keys = map(_key, values)
    get = bins.get
    for key in keys:
        bins[key] = get(key, 0) + 1
