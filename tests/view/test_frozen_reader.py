"""The view's reader keeps partitions' buckets as their bytes (settled ones only in Redis) and its settled
buckets frozen: its answers are exactly those of a brute-force copy of the same view that merges decoded entries into live buckets (the
reader as it was), through random writes, folds into hours, retirements and a clock moving the hot hours on."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
import pytest

from tests.infra.redis import RedisServer
from tests.processors.test_state import _span
from tests.view.materializing import pending, write_and_wait
from tokentrace.core.buckets import BucketState, Projection
from tokentrace.core.codec import encode_wire
from tokentrace.core.tiers import hour_of
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import DAY_MS, HOUR_MS, MINUTE_MS, Timeline, TimelineSettings
from tokentrace.processors.state import Applier, compact, expire
from tokentrace.view.reader import ViewReader
from tokentrace.view.schema import (
    BucketEntry,
    Entry,
    RetiredEntry,
    decode_entry,
    is_hour_key,
    parse_key,
)
from tokentrace.view.writer import Materializer

pytestmark = [pytest.mark.redis]

MODELS = ["gpt-4o", "gpt-4o-mini", "claude"]
WORKFLOWS = ["chat", "summary", "rewrite", "agent"]


async def _reference(reader: ViewReader) -> Timeline:
    """The view as live buckets: every entry Redis holds, decoded, merged per the rules of core/tiers.py."""
    redis = reader.redis
    minutes: dict[int, dict[int, BucketState]] = {}
    hours: dict[int, dict[int, BucketState]] = {}
    retired: dict[int, RetiredEntry] = {}
    for member in await redis.zrange(reader.keys.changes, 0, -1):
        data = await redis.hget(reader.keys.entry(member.decode()), "d")
        if not data:
            continue
        entry = decode_entry(data)
        partition, start = parse_key(member)
        if isinstance(entry, RetiredEntry):
            retired[partition] = entry
        elif isinstance(entry, BucketEntry) and start is not None:
            (hours if is_hour_key(member) else minutes).setdefault(start, {})[partition] = entry.state

    def horizon(partition: int) -> int:
        return retired[partition].horizon if partition in retired else 0

    timeline = Timeline(reader.settings)
    for table, is_hour in ((hours, True), (minutes, False)):
        for start, states in table.items():
            merged: BucketState | None = None
            for partition, state in states.items():
                hidden = not is_hour and partition in hours.get(hour_of(start), {})
                if start < horizon(partition) or hidden:
                    continue
                merged = merged or BucketState()
                merged.merge(state)
            if merged is not None:
                (timeline.replace_hour if is_hour else timeline.replace_bucket)(start, merged)
    total = BucketState()
    for entry in retired.values():
        total.merge(entry.state)
    timeline.replace_retired(total)
    return timeline


def _plain(projection: Projection) -> dict[str, Any]:
    return {group: msgspec.to_builtins(aggregate) for group, aggregate in projection.items()}


def _answers(timeline: Timeline, now: int, rng: random.Random) -> list[Any]:
    """Windows of every length the API asks for, grouped and filtered, lifetimes, attribute keys."""
    end = timeline.window_end(now)
    windows = [end - w for w in (MINUTE_MS, HOUR_MS, 6 * HOUR_MS, DAY_MS, 3 * DAY_MS, 30 * DAY_MS)]
    windows += [end - rng.randrange(MINUTE_MS, 4 * DAY_MS) for _ in range(3)]
    out: list[Any] = []
    for start in windows:
        for groupby, where in ((None, {}), ("model", {}), ("workflow", {}), (None, {"workflow": "chat"})):
            out.append(_plain(timeline.query(start, end, groupby, where)))
            parts = timeline.query_parts(start, end, groupby, where)
            out.append(_plain(parts.total()))
            parts.install()  # as the API does: the next answers come from the memos installed
        out.append(sorted(timeline.attribute_keys(start, end)))
    for groupby in (None, "model", "series"):
        out.append(_plain(timeline.lifetime(groupby)))
        lifetime = timeline.lifetime_parts(groupby)
        out.append(_plain(lifetime.total()))
        lifetime.install()
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_reader_with_frozen_copies_answers_as_live_copies_of_the_same_view(
    redis_server: RedisServer, seed: int
) -> None:
    rng = random.Random(seed)
    real_now = now_ms()
    clock = [real_now - 6 * HOUR_MS]  # moves on by up to two hours a round, to the real now
    reader = ViewReader(
        redis_server.url, TimelineSettings(), settle_interval_s=0.0, clock=lambda: clock[0], fetch_chunk=7
    )
    await reader.open()
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    offsets = [0, 0, 0]
    materializer = Materializer(redis_server.url, reader.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    frozen_seen = 0
    try:
        await materializer.check_epoch()
        for step in range(30):
            partition = rng.randrange(3)
            roll = rng.random()
            deleted: list[bytes] = []
            if roll < 0.65 or step < 4:
                recent = rng.random() < 0.5
                low = real_now - (3 * HOUR_MS if recent else 3 * DAY_MS)
                spans = [
                    _span(
                        rng.randrange(1, 500),
                        rng.randrange(low, real_now),
                        model=rng.choice(MODELS),
                        latency_ms=rng.randrange(1, 5000),
                        attributes={"workflow": rng.choice(WORKFLOWS)},
                    )
                    for _ in range(rng.randrange(1, 40))
                ]
                offsets[partition] += 1
                applied = applier.apply(entries, partition, offsets[partition], real_now, encode_wire(spans))
                written = list(applied.dirty)
            elif roll < 0.85:
                cutoff = hour_of(real_now) - rng.randrange(1, 50) * HOUR_MS
                written, deleted = compact(entries, partition, cutoff)
            else:
                horizon = hour_of(real_now) - rng.randrange(30, 80) * HOUR_MS
                written, deleted = expire(entries, partition, horizon)
            await write_and_wait(materializer, pending(entries, written), attempts=500)
            if deleted and rng.random() < 0.5:  # a reader may sync between the write and the deletions
                await reader.sync()
                assert _answers(reader.timeline, real_now, random.Random(step)) == _answers(
                    await _reference(reader), real_now, random.Random(step)
                )
            await write_and_wait(materializer, pending(entries, deleted), attempts=500)
            clock[0] = min(real_now, clock[0] + rng.randrange(0, 2 * HOUR_MS))
            await reader.sync()
            expected = _answers(await _reference(reader), real_now, random.Random(step))
            assert _answers(reader.timeline, real_now, random.Random(step)) == expected, f"step {step}"
            frozen_seen = max(frozen_seen, reader.timeline.cache_stats().frozen_buckets)
        # A replica starting now, over the same view, answers the same too.
        fresh = ViewReader(redis_server.url, TimelineSettings(), clock=lambda: real_now, fetch_chunk=5)
        await fresh.open()
        try:
            await fresh.sync()
            assert _answers(fresh.timeline, real_now, random.Random(0)) == _answers(
                await _reference(reader), real_now, random.Random(0)
            )
            stats = fresh.timeline.cache_stats()
            assert stats.frozen_buckets > 0 and stats.live_buckets <= 2 * HOUR_MS // MINUTE_MS
        finally:
            await fresh.close()
    finally:
        writer.cancel()
        await materializer.close()
        await reader.close()
    assert frozen_seen > 0  # the copies compared were frozen ones
    assert reader.refetched > 0  # and merges of settled buckets read their partitions from Redis again


async def test_a_retirement_read_by_a_sync_that_failed_half_way_is_counted_by_the_next(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retired entry comes first in a sync; if Redis fails before the sync ends, the next one (which reads
    the same changes again) must still move the retired total and hide the buckets below the new horizon."""
    now = now_ms()
    old, recent = hour_of(now) - 60 * HOUR_MS, hour_of(now) - 2 * HOUR_MS
    reader = ViewReader(redis_server.url, TimelineSettings(), fetch_chunk=1)
    await reader.open()
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    materializer = Materializer(redis_server.url, reader.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    try:
        await materializer.check_epoch()
        for partition in (0, 1):
            spans = [_span(i, at + i * MINUTE_MS) for i in range(1, 4) for at in (old, recent)]
            applier.apply(entries, partition, 1, now, encode_wire(spans))
        await write_and_wait(materializer, pending(entries, list(entries)), attempts=500)
        await reader.sync()
        written, deleted = expire(entries, 0, old + HOUR_MS)
        await write_and_wait(materializer, pending(entries, written), attempts=500)
        await write_and_wait(materializer, pending(entries, deleted), attempts=500)

        real_merge = reader._merge
        failures = []

        async def failing(touched: set[int], touched_hours: set[int], before: int | None) -> None:
            if before is not None and not failures:
                failures.append(before)
                raise ConnectionError("Redis went away")
            await real_merge(touched, touched_hours, before)

        monkeypatch.setattr(reader, "_merge", failing)
        with pytest.raises(ConnectionError):
            await reader.sync()
        assert failures  # it failed after reading the retired entry, before the end
        await reader.sync()
        assert _answers(reader.timeline, now, random.Random(0)) == _answers(
            await _reference(reader), now, random.Random(0)
        )
        assert reader.timeline.lifetime(None) == (await _reference(reader)).lifetime(None)
    finally:
        writer.cancel()
        await materializer.close()
        await reader.close()
