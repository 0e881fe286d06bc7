"""The Redis view on its own (Redis only, no Kafka): the writer's compare-and-set writes and tombstones, the
reader's partition merging, retirement, compaction and traces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.infra.redis import RedisServer
from tests.processors.test_state import _span
from tests.view.materializing import pending, write_and_wait
from tokentrace.core.buckets import BucketState
from tokentrace.core.codec import encode_wire
from tokentrace.core.timefmt import now_ms
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, TimelineSettings, total
from tokentrace.core.traces import TraceFilter
from tokentrace.processors.state import Applier, compact, expire
from tokentrace.view.keys import encode_span, trace_spans
from tokentrace.view.reader import ViewReader
from tokentrace.view.schema import BucketEntry, Entry, bucket_key, encode_entry
from tokentrace.view.writer import Materializer

pytestmark = [pytest.mark.redis]


@pytest.fixture
async def reader(redis_server: RedisServer) -> AsyncIterator[ViewReader]:
    opened = ViewReader(redis_server.url)
    await opened.open()
    yield opened
    await opened.close()


async def _count(reader: ViewReader, start_ms: int, end_ms: int) -> int:
    """Spans in ``[start_ms, end_ms)`` as the view has them now."""
    await reader.sync()
    return total(reader.timeline.query(start_ms, end_ms, None, {})).count


async def _lifetime(reader: ViewReader) -> int:
    await reader.sync()
    return total(reader.timeline.lifetime(None)).count


async def _trace(reader: ViewReader, trace_id: str) -> dict[str, Any] | None:
    found = await reader.traces([trace_id])
    return found[0].body() if found else None


async def test_partitions_merge_stale_versions_lose_and_retired_buckets_move_to_lifetime(
    reader: ViewReader, redis_server: RedisServer
) -> None:
    now = now_ms()
    b = now - now % MINUTE_MS - MINUTE_MS
    a = b - MINUTE_MS
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    for partition in (0, 1):
        for offset in range(3):
            applier.apply(entries, partition, offset, now, encode_wire([_span(1, a), _span(2, b), _span(3, b)]))
    materializer = Materializer(redis_server.url, reader.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    try:
        await materializer.check_epoch()
        await write_and_wait(materializer, pending(entries, list(entries)))
        assert await _count(reader, a, b + MINUTE_MS) == 18
        assert await _count(reader, a, b) == 6

        # An older version of an entry (a replay's intermediate state) never replaces a newer one.
        await write_and_wait(materializer, [(bucket_key(0, b), 1, encode_entry(BucketEntry(1, BucketState())))])
        assert await _count(reader, a, b + MINUTE_MS) == 18

        # Retire partition 0's bucket a: the window loses it, the lifetime keeps it.
        written, deleted = expire(entries, 0, b)
        await write_and_wait(materializer, pending(entries, written))
        await write_and_wait(materializer, pending(entries, deleted))
        assert await _count(reader, a, b) == 3
        assert await _count(reader, a, b + MINUTE_MS) == 15
        assert await _lifetime(reader) == 18

        # A flushed Redis comes back whole once a worker re-materializes (its epoch check).
        with redis_server.client() as client:
            client.flushall()
        assert await _lifetime(reader) == 0
        await materializer.check_epoch()
        await write_and_wait(materializer, pending(entries, list(entries)))
        assert await _lifetime(reader) == 18
        assert await _count(reader, a, b) == 3
    finally:
        writer.cancel()
        await materializer.close()


async def test_a_view_has_an_epoch_before_its_first_entry_so_a_reader_always_sees_a_flush(
    reader: ViewReader, redis_server: RedisServer
) -> None:
    """Entries written before any epoch existed, then a flush: a reader that had synced them must not keep
    them (nor skip what comes next, numbered from 1 again) because the epoch read None before and after."""
    now = now_ms()
    b = now - now % MINUTE_MS - MINUTE_MS
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    applier.apply(entries, 0, 0, now, encode_wire([_span(1, b), _span(2, b)]))
    materializer = Materializer(redis_server.url, reader.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    try:
        await write_and_wait(materializer, pending(entries, list(entries)))  # no epoch check before: the writer's own
        with redis_server.client() as client:
            assert client.get(reader.keys.epoch) is not None
        assert await _lifetime(reader) == 2
        with redis_server.client() as client:
            client.flushall()
        assert await _lifetime(reader) == 0
    finally:
        writer.cancel()
        await materializer.close()


async def test_compacted_hours_replace_their_minutes_without_double_counting(
    reader: ViewReader, redis_server: RedisServer
) -> None:
    now = now_ms()
    hour = now - now % HOUR_MS - 5 * HOUR_MS
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    for partition in (0, 1):
        for offset in range(4):
            spans = [_span(1, hour + offset * MINUTE_MS), _span(2, hour + 30 * MINUTE_MS)]
            applier.apply(entries, partition, offset, now, encode_wire(spans))
    materializer = Materializer(redis_server.url, reader.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    try:
        await materializer.check_epoch()
        await write_and_wait(materializer, pending(entries, list(entries)))

        async def counts() -> tuple[int, int, int]:
            window = await _count(reader, hour, hour + HOUR_MS)
            wider = await _count(reader, hour - HOUR_MS, hour + 2 * HOUR_MS)
            return window, wider, await _lifetime(reader)

        assert await counts() == (16, 16, 16)
        written, deleted = compact(entries, 0, hour + HOUR_MS)
        await write_and_wait(materializer, pending(entries, written))  # the hour first: p0's minutes now hidden
        assert await counts() == (16, 16, 16)
        await write_and_wait(materializer, pending(entries, deleted))  # then the minutes' tombstones
        assert await counts() == (16, 16, 16)
        # A late span for the compacted hour lands in the hour entry.
        applied = applier.apply(entries, 0, 9, now, encode_wire([_span(3, hour + 59 * MINUTE_MS)]))
        await write_and_wait(materializer, pending(entries, applied.dirty))
        assert await counts() == (17, 17, 17)
        # A second replica that starts now sees the same.
        fresh = ViewReader(redis_server.url, prefix=reader.keys.prefix)
        await fresh.open()
        try:
            assert await _count(fresh, hour, hour + HOUR_MS) == 17
        finally:
            await fresh.close()
    finally:
        writer.cancel()
        await materializer.close()


async def test_old_tombstones_are_collected_and_a_late_copy_stays_hidden(
    reader: ViewReader, redis_server: RedisServer
) -> None:
    now = now_ms()
    hour = now - now % HOUR_MS - 5 * HOUR_MS
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    for offset in range(6):
        applier.apply(entries, 0, offset, now, encode_wire([_span(1, hour + offset * MINUTE_MS)]))
    minutes = [bucket_key(0, hour + offset * MINUTE_MS) for offset in range(6)]
    stale = {key: encode_entry(entries[key]) for key in minutes}
    materializer = Materializer(redis_server.url, reader.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    try:
        await materializer.check_epoch()
        await write_and_wait(materializer, pending(entries, list(entries)))
        written, deleted = compact(entries, 0, hour + HOUR_MS)
        await write_and_wait(materializer, pending(entries, written))
        await write_and_wait(materializer, pending(entries, deleted))
        assert sorted(deleted) == sorted(minutes)
        before = await _count(reader, hour, hour + HOUR_MS)
        with redis_server.client() as client:
            assert client.zcard(reader.keys.tombstones) == 6
            # Too recent: nothing is collected.
            assert await materializer.collect_tombstones(3600, time.time()) == 0
            assert await materializer.collect_tombstones(0, time.time() + 1) == 6
            assert client.zcard(reader.keys.tombstones) == 0
            assert not any(client.exists(reader.keys.entry(k.decode())) for k in minutes)
            assert client.zcard(reader.keys.changes) == len(entries)  # the hour and the meta entry
        # A stalled former owner writes an old minute again: readers hide it under the hour entry.
        await write_and_wait(materializer, [(minutes[0], 0, stale[minutes[0]])])
        assert await _count(reader, hour, hour + HOUR_MS) == before == 6
        fresh = ViewReader(redis_server.url, prefix=reader.keys.prefix)
        await fresh.open()
        try:
            assert await _count(fresh, hour, hour + HOUR_MS) == 6
            assert await _lifetime(fresh) == 6
        finally:
            await fresh.close()
    finally:
        writer.cancel()
        await materializer.close()


async def test_the_trace_index_takes_long_traces_and_expires_old_ones_whole(
    reader: ViewReader, redis_server: RedisServer
) -> None:
    """A trace longer than one script call may unpack is indexed in full; expiry deletes the traces that
    started more than the retention (an hour here) ago (listing entry and spans), in bounded rounds, and keeps the others."""
    now = now_ms()
    old, recent = now - 2 * HOUR_MS, now - MINUTE_MS
    long_trace = [(_span(i, old + i, trace_id="long", span_id=f"s{i}"), old + i) for i in range(9000)]
    short = [(_span(i, old + i, trace_id=f"old{i}", span_id="s"), old + i) for i in range(25)]
    short += [(_span(i, recent, trace_id=f"new{i}", span_id="s"), recent) for i in range(5)]
    materializer = Materializer(redis_server.url, reader.keys, 3_600_000, lambda: [])
    try:
        await materializer.write_traces(long_trace + short)
        assert materializer.trace_failures == 0
        trace = await _trace(reader, "long")
        assert trace is not None and len(trace["spans"]) == 9000
        total_traces, _ = await reader.search_traces(TraceFilter(), 10, 0)
        assert total_traces == 31
        with redis_server.client() as client:
            assert client.ttl(reader.keys.trace("long")) == -1  # retention follows the listing, not a TTL

            assert await materializer.expire_traces(now, limit=7, rounds=2) == 14
            assert await materializer.expire_traces(now, limit=7) == 12
            assert await materializer.expire_traces(now, limit=7) == 0
            assert await _trace(reader, "long") is None
            assert not any(client.exists(reader.keys.trace(f"old{i}")) for i in range(25))
            assert sorted(t.decode() for t in client.zrange(reader.keys.traces, 0, -1)) == [f"new{i}" for i in range(5)]
            assert all(len(trace_spans(client.get(reader.keys.trace(f"new{i}")))) == 1 for i in range(5))
    finally:
        await materializer.close()


async def test_traces_an_earlier_build_wrote_as_hashes_are_read_and_expired(
    reader: ViewReader, redis_server: RedisServer
) -> None:
    """Builds before the JSON-lines index kept a trace as a hash by span id; after an upgrade those traces
    still show (merged with spans indexed since), and retention deletes them."""
    now = now_ms()
    old, recent = now - 2 * HOUR_MS, now - MINUTE_MS
    with redis_server.client() as client:
        client.hset(
            reader.keys.legacy_trace("t"), mapping={"s1": encode_span(_span(1, recent, trace_id="t", span_id="s1"))}
        )
        client.hset(
            reader.keys.legacy_trace("gone"), mapping={"s": encode_span(_span(1, old, trace_id="gone", span_id="s"))}
        )
        client.zadd(reader.keys.traces, {"t": recent, "gone": old})
    materializer = Materializer(redis_server.url, reader.keys, 3_600_000, lambda: [])
    try:
        await materializer.write_traces([(_span(2, recent + 1, trace_id="t", span_id="s2"), recent + 1)])
        trace = await _trace(reader, "t")
        assert trace is not None and [s.span_id for s in trace["spans"]] == ["s1", "s2"]
        assert await _trace(reader, "gone") is not None
        assert await materializer.expire_traces(now) == 1
        assert await _trace(reader, "gone") is None
        with redis_server.client() as client:
            assert not client.exists(reader.keys.legacy_trace("gone"))
    finally:
        await materializer.close()
