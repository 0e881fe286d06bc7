"""Batches big enough to be encoded off the event loop (an OTLP request at its cap) keep the store's promises:
counted once per ``Idempotency-Key``, and only once durable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.api.stores.faulty_fs import SwitchableDisk
from tests.api.stores.test_embedded_durability import open_store, spans
from tokentrace.api.stores import embedded
from tokentrace.api.stores.base import StoreUnavailable
from tokentrace.core.buckets import SERIES

BIG = embedded._ENCODE_INLINE_SPANS + 1


async def test_retries_of_a_big_batch_count_it_once(tmp_path: Path) -> None:
    """The retries arrive while the original is being encoded in its thread, and while it is being written."""
    store = await open_store(tmp_path / "d")
    batch = spans("big", BIG)
    first = asyncio.create_task(store.ingest(batch, "key-1"))
    await asyncio.sleep(0)  # the original is in its thread
    during_encoding = asyncio.create_task(store.ingest(spans("big", BIG), "key-1"))
    await asyncio.gather(first, during_encoding, store.ingest(spans("big", BIG), "key-1"))
    await store.ingest(spans("big", BIG), "key-1")  # after it was counted
    assert store.span_total == BIG
    lifetime = (await store.lifetime_parts(SERIES)).total()
    assert sum(a.count for a in lifetime.values()) == BIG
    await store.close()

    reopened = await open_store(tmp_path / "d")
    assert reopened.span_total == BIG
    await reopened.close()


async def test_a_big_batch_the_disk_refuses_is_not_counted(tmp_path: Path) -> None:
    disk = SwitchableDisk()
    store = await open_store(tmp_path / "d", disk)
    disk.fail_fsync = True
    with pytest.raises(StoreUnavailable):
        await store.ingest(spans("lost", BIG), "key-1")
    assert store.span_total == 0
    assert "key-1" not in store.idempotency_keys
    disk.fail_fsync = False
    for _ in range(200):
        if (await store.health()).healthy:
            break
        await asyncio.sleep(0.02)
    await store.ingest(spans("lost", BIG), "key-1")  # the retry is counted: the first try never was
    assert store.span_total == BIG
    await store.close()
