"""The embedded store over frozen buckets: a restart loads them frozen with the snapshot's memos and answers as
the store did before it, and as a store that counted the same spans from scratch; so do back-filled writes and
a kill -9 after them (the log replays into frozen buckets)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tokentrace.api.stores import embedded
from tokentrace.api.stores.embedded import EmbeddedSettings, EmbeddedStore
from tokentrace.core import frozen
from tokentrace.core.buckets import SERIES
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.core.timeline import DAY_MS, HOUR_MS, MINUTE_MS

SPECS = [(None, {}), ("model", {}), ("caller", {"model": "m1"}), (SERIES, {}), ("workflow", {})]
WINDOWS = (HOUR_MS, DAY_MS, 3 * DAY_MS, 30 * DAY_MS)


def spans(rng: random.Random, n: int, now: int, oldest: int) -> list[Span]:
    return [
        Span(
            model=f"m{rng.randrange(3)}",
            caller=f"c{rng.randrange(2)}",
            prompt_tokens=rng.randrange(1, 5000),
            latency_ms=rng.uniform(1, 5000),
            cost_usd=rng.choice([None, rng.uniform(0, 0.1)]),
            status=rng.choice(["ok", "ok", "error", "timeout"]),
            started_at=format_ms(now - rng.randrange(MINUTE_MS, oldest)),
            attributes={"workflow": rng.choice("abc"), "eval.score": rng.random()},
        )
        for _ in range(n)
    ]


async def open_store(data: Path | None) -> EmbeddedStore:
    store = EmbeddedStore(data, EmbeddedSettings(maintenance_interval_s=3600))
    await store.open()
    return store


async def answers(store: EmbeddedStore, now: int) -> list[object]:
    out: list[object] = []
    end = store.timeline.window_end(now)
    for groupby, where in SPECS:
        for window in WINDOWS:
            start = store.timeline.window_start(now, window)
            out.append(await store.query(start, end, groupby, where))
            parts = await store.query_parts(start, end, groupby, where)
            out.append(parts.total())
        out.append((await store.lifetime_parts(groupby)).total())
    return out


async def settle(store: EmbeddedStore) -> None:
    """What the maintenance task does: compaction (which freezes what no write reached) and the memo warm-up."""
    store.maintain_now()
    store.maintain_now()
    if store._warming is not None:
        await asyncio.wait_for(store._warming, 60)


async def test_a_restart_answers_as_before_and_as_a_recount(tmp_path: Path) -> None:
    rng, now = random.Random(5), now_ms()
    first, late = spans(rng, 600, now, 20 * DAY_MS), spans(rng, 300, now, 20 * DAY_MS)
    store = await open_store(tmp_path / "d")
    await store.ingest(first)
    await settle(store)
    before = await answers(store, now)
    await store.close()

    restarted = await open_store(tmp_path / "d")
    stats = restarted.timeline.cache_stats()
    assert stats.frozen_buckets > 0 and stats.block_memos > 0
    assert stats.live_buckets <= 2 * HOUR_MS // MINUTE_MS  # only the hot hours may be live
    recount = await open_store(None)  # memory-only, every bucket live: the reference
    await recount.ingest(first)
    recount.maintain_now()  # compacted alike: an hour bucket counts where it starts
    assert await answers(restarted, now) == before
    assert before == await answers(recount, now)

    await restarted.ingest(late)  # back-filled into frozen buckets
    await recount.ingest(late)
    assert restarted.timeline.cache_stats().live_buckets <= 2 * HOUR_MS // MINUTE_MS  # nothing old was thawed
    expected = await answers(recount, now)
    assert await answers(restarted, now) == expected
    # kill -9: no snapshot after the late spans; the log replays them into the frozen buckets.
    assert restarted._wal is not None
    await restarted._wal.close()
    replayed = await open_store(tmp_path / "d")
    assert replayed.span_total == len(first) + len(late)
    assert await answers(replayed, now) == expected
    await replayed.close()
    await recount.close()


async def test_a_restart_reads_attribute_grouped_windows_from_the_snapshots_memos(tmp_path: Path) -> None:
    """The memos by ``workflow`` the maintenance pass warmed ride in the snapshot: after a restart the first
    ``groupby=workflow`` over 30 days decodes only the buckets of the hot hours, not every bucket, and answers as
    a store that counted the same spans from scratch."""
    rng, now = random.Random(6), now_ms()
    store = await open_store(tmp_path / "d")
    await store.ingest(spans(rng, 600, now, 20 * DAY_MS))
    await settle(store)
    assert any(r.groupby == "workflow" for r in store.timeline.memo_records())
    await store.close()

    restarted = await open_store(tmp_path / "d")
    if restarted._warming is not None:
        await asyncio.wait_for(restarted._warming, 60)
    timeline = restarted.timeline
    recount = EmbeddedStore(None, EmbeddedSettings(maintenance_interval_s=3600))
    recount.timeline.restore(timeline.snapshot())  # the same buckets, no memos
    hot = sum(1 for _, start in timeline._states_between(timeline.hot_from, now + DAY_MS))
    end = timeline.window_end(now)
    start = timeline.window_start(now, 30 * DAY_MS)
    expected = await recount.query(start, end, "workflow", {})
    before = frozen.decoded_projections()
    parts = await restarted.query_parts(start, end, "workflow", {})
    assert parts.total() == expected
    assert frozen.decoded_projections() - before <= hot < timeline.cache_stats().frozen_buckets // 5
    await restarted.close()


async def test_the_memos_wait_for_the_end_of_a_back_fill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch of a back-fill makes the memos of the days it reaches stale: while one is under way
    (``_BACKFILL_SPANS`` settled writes a ``_BACKFILL_QUIET_S``), the warming task applies what waits and computes
    no memo; once it ends, the memos, all of them. Chasing them meanwhile took every idle moment of the event loop
    (bench/metrics_query.py's back-fill: 2.8k spans per CPU-second)."""
    monkeypatch.setattr(embedded, "_BACKFILL_SPANS", 50)
    monkeypatch.setattr(embedded, "_BACKFILL_QUIET_S", 0.2)
    rng, now = random.Random(7), now_ms()
    store = await open_store(tmp_path / "d")
    await store.ingest(spans(rng, 300, now, 20 * DAY_MS))
    await settle(store)
    timeline = store.timeline
    warmed = mock.Mock(wraps=timeline.warm_memos)
    monkeypatch.setattr(timeline, "warm_memos", warmed)

    await store.ingest(spans(rng, 60, now, 20 * DAY_MS))  # 60 settled writes since the last pass
    store.maintain_now()
    for _ in range(10):  # the back-fill goes on for 0.5 s: 60 settled writes every 0.05 s
        await asyncio.sleep(0.05)
        await store.ingest(spans(rng, 60, now, 20 * DAY_MS))
    assert warmed.call_count == 0 and store._warming is not None and not store._warming.done()
    await asyncio.wait_for(store._warming, 10)  # it ended: the memos are warmed, all of them
    assert warmed.call_count > 0 and timeline.warm_memos() and timeline.pending_spans == 0

    real, slices = type(timeline).warm_memos.__get__(timeline), []
    loop = asyncio.get_running_loop()

    def backfilled_meanwhile(*args: Any, **kwargs: Any) -> bool:
        slices.append(loop.time())
        if len(slices) == 1:
            timeline.settled_writes += 50  # a back-fill begins while the memos are warmed
            return False
        return real(*args, **kwargs)

    monkeypatch.setattr(timeline, "warm_memos", backfilled_meanwhile)
    await store.ingest(spans(rng, 10, now, 20 * DAY_MS))
    store.maintain_now()
    assert store._warming is not None
    await asyncio.wait_for(store._warming, 10)
    assert len(slices) > 1 and slices[1] - slices[0] >= 0.2  # the next slice waited for the back-fill's end
    assert real() and timeline.pending_spans == 0
    await store.close()
