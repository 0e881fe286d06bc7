"""``ProjectionMemo``: projections kept with the stamp each was made at, bounded by entries and by groups.

A projection is as big as its groups (a bucket by caller or a window by series can hold thousands), so a memo of
them is bounded by both counts; the oldest put goes first. A lookup takes the projection only at the stamp it was
made at (a bucket's version, a window's ``Timeline._range_stamp``): anything written since makes it stale.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from tokentrace.core.buckets import Projection

__all__ = ["ProjectionMemo"]

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")


class ProjectionMemo(Generic[K, S]):
    """At most ``entries`` projections holding at most ``groups`` groups in all (one bigger than that alone is
    kept alone)."""

    def __init__(self, entries: int, groups: int) -> None:
        self.max_entries = entries
        self.max_groups = groups
        self._items: dict[K, tuple[S, Projection]] = {}
        #: Groups held in all.
        self.groups = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, stamp: S) -> Projection | None:
        """The projection at ``key`` if it was made at ``stamp``."""
        cached = self._items.get(key)
        return cached[1] if cached is not None and cached[0] == stamp else None

    def pop(self, key: K) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.groups -= len(old[1])

    def put(self, key: K, stamp: S, projection: Projection) -> None:
        """Keep ``projection`` at ``key`` (in place of what was there), dropping the oldest to stay in bounds."""
        self.pop(key)
        items = self._items
        while items and (len(items) >= self.max_entries or self.groups + len(projection) > self.max_groups):
            self.groups -= len(items.pop(next(iter(items)))[1])
        items[key] = (stamp, projection)
        self.groups += len(projection)

    def forget(self, which: Callable[[K], bool]) -> None:
        """Drop every projection whose key ``which`` names."""
        for key in [k for k in self._items if which(k)]:
            self.pop(key)

    def clear(self) -> None:
        self._items.clear()
        self.groups = 0
