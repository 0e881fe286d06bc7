"""``EmbeddedStore.apply_recovered``: spans already durable, counted without the log, as recovery replays them.

What it counts must be what ``ingest`` counted for the same batches (aggregates, trace index, span total, the
idempotency keys), and what a restart recovers from the log; a key it records stops a retry of that batch.
"""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
from benchkit.spans import make_spans

from tests.api.stores.test_embedded_durability import open_store
from tokentrace.api.stores.embedded import EmbeddedSettings, EmbeddedStore
from tokentrace.core.ingest import prepare_batch
from tokentrace.core.span import Span
from tokentrace.core.timefmt import now_ms


def prepared(spans: list[Span]) -> list[Span]:
    """``spans`` stamped and bound-checked as ``POST /spans`` leaves them for the store (priced already)."""
    arrival = now_ms()
    prepare_batch(spans, arrival, None, arrival - 86_400_000, 300_000)
    return spans


def batches() -> list[tuple[list[Span], str | None]]:
    """Five batches of 1-3 span traces over the last 50 minutes, every other one with an idempotency key."""
    spans = prepared(make_spans(400, random.Random(3)))
    return [(spans[i : i + 80], f"key-{i}" if i % 160 == 0 else None) for i in range(0, 400, 80)]


async def state(store: EmbeddedStore, trace_ids: list[str]) -> tuple[bytes, int, list[str], list[object]]:
    """Everything a batch changes: the aggregates, the span total, the keys, each trace."""
    traces = [await store.trace(trace_id) for trace_id in trace_ids]
    return msgspec.msgpack.encode(store.timeline.snapshot()), store.span_total, list(store.idempotency_keys), traces


async def test_it_counts_what_ingest_counted_and_what_a_restart_recovers(tmp_path: Path) -> None:
    written = batches()
    trace_ids = sorted({span.trace_id for spans, _ in written for span in spans})
    live = await open_store(tmp_path / "data")
    for spans, key in written:
        await live.ingest(list(spans), key)
    assert live._wal is not None
    await live._wal.close()  # as kill -9 leaves it: no final snapshot, the log holds every batch

    recovered = EmbeddedStore(None, EmbeddedSettings(maintenance_interval_s=3600))
    at_ms = now_ms()
    for spans, key in written:
        recovered.apply_recovered(list(spans), key, at_ms)
    assert recovered.span_total == 400
    expected = await state(live, trace_ids)
    assert await state(recovered, trace_ids) == expected

    restarted = await open_store(tmp_path / "data")
    assert restarted.replay_failures == 0
    assert await state(restarted, trace_ids) == expected
    await restarted.close()


async def test_a_key_it_records_stops_a_retry_but_it_checks_none_itself() -> None:
    store = EmbeddedStore(None)
    spans = prepared(make_spans(10, random.Random(4)))
    store.apply_recovered(spans, "batch-1", now_ms())
    await store.ingest(list(spans), "batch-1")
    assert store.span_total == 10, "a retry of a recovered batch is not counted again"
    store.apply_recovered(spans, "batch-1", now_ms())
    assert store.span_total == 20, "the log decides what is replayed: apply_recovered counts what it is given"
