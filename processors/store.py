"""The worker's table store: Faust's memory store, restored so that no entry ever moves back.

Faust restores a table by replaying its changelog, last record wins. A worker that stalled past its
session timeout (a long pause, a network partition) can still land a changelog write after the new owner
of the partition has taken over; with last-wins, the next restore could then bring back that older
version of an entry while the committed source offset has moved past the events it lacks. Every entry
carries the offset it counted through (a retired entry its horizon), so this store keeps, per key, the
version with the highest one; deletions apply as they come (a resurrected entry is below a horizon or
under an hour entry, where readers ignore it and the next retire pass drops it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust.stores import STORES
from faust.stores.memory import Store

from tokentrace.processors.faust_adapter import remember_partition

__all__ = ["STORE_URL", "MonotonicStore"]

STORE_URL = "tokentrace-memory://local"  # a host: an empty yarl URL is falsy and Faust would ignore it


class MonotonicStore(Store[Any, Any]):
    """Memory store whose changelog restore keeps each key's highest-offset version."""

    def apply_changelog_batch(
        self,
        batch: Iterable[Any],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        data = self.data
        for event in batch:
            key = to_key(event.key)
            remember_partition(self, key, event.message.partition)
            if event.message.value is None:
                data.pop(key, None)
                continue
            value = to_value(event.value)
            current = data.get(key)
            if current is not None and getattr(current, "offset", -1) > getattr(value, "offset", -1):
                continue  # a late write of an older version (a stalled former owner)
            data[key] = value


STORES.aliases["tokentrace-memory"] = f"{__name__}:MonotonicStore"
