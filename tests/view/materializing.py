"""Writing entries to the view in tests: what a worker hands its ``Materializer``, and waiting until it is written."""

from __future__ import annotations

import asyncio

from tokentrace.view.schema import TOMBSTONE_VERSION, Entry, encode_entry
from tokentrace.view.writer import Materializer, Pending

__all__ = ["pending", "write_and_wait"]


async def write_and_wait(materializer: Materializer, items: list[Pending], attempts: int = 200) -> None:
    """Submit ``items`` and wait until the materializer is idle (``attempts`` checks 10 ms apart)."""
    materializer.submit(items)
    for _ in range(attempts):
        if materializer.idle:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("materializer did not drain")


def pending(entries: dict[bytes, Entry], keys: list[bytes]) -> list[Pending]:
    """The writes for ``keys`` as the worker makes them: each entry encoded, a tombstone for a deleted one."""
    out: list[Pending] = []
    for key in keys:
        entry = entries.get(key)
        out.append((key, TOMBSTONE_VERSION, b"") if entry is None else (key, entry.offset, encode_entry(entry)))
    return out
