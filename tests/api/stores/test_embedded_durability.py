"""The embedded store over a disk that fails on purpose (the WAL's ``fs`` seam), and over older data dirs."""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

import msgspec
import pytest

from tests.api.stores.faulty_fs import SwitchableDisk
from tokentrace.api.stores.base import StoreUnavailable
from tokentrace.api.stores.embedded import EmbeddedSettings, EmbeddedStore
from tokentrace.api.stores.fsio import FileSystem
from tokentrace.core.codec import encode_wire
from tokentrace.core.span import Span, span_time_ms
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.core.timeline import Timeline, TimelineSettings
from tokentrace.core.traces import TraceIndex


def spans(trace_id: str, n: int = 1) -> list[Span]:
    at = format_ms(now_ms() - 1000)
    return [Span(trace_id=trace_id, model="m", prompt_tokens=10, started_at=at) for _ in range(n)]


async def open_store(data: Path, fs: FileSystem | None = None) -> EmbeddedStore:
    store = EmbeddedStore(data, EmbeddedSettings(maintenance_interval_s=3600), fs)
    await store.open()
    assert store._wal is not None
    store._wal.retry_initial_s = 0.01
    return store


async def test_a_failed_fsync_is_not_applied_and_writes_resume_by_themselves(tmp_path: Path) -> None:
    disk = SwitchableDisk()
    store = await open_store(tmp_path / "d", disk)
    await store.ingest(spans("before"))
    disk.fail_fsync = True
    with pytest.raises(StoreUnavailable, match="cannot write the log"):
        await store.ingest(spans("lost"))
    assert store.span_total == 1, "a batch that was not made durable is not counted"
    with pytest.raises(StoreUnavailable, match="resume by themselves"):
        await store.ingest(spans("refused"))  # refused at once while the disk is failing
    health = await store.health()
    assert not health.healthy and health.reason is not None and "next try" in health.reason
    await asyncio.sleep(0.1)
    assert disk.probes >= 2, "the disk is probed again and again, with backoff"
    disk.fail_fsync = False
    for _ in range(200):
        if (await store.health()).healthy:
            break
        await asyncio.sleep(0.02)
    await store.ingest(spans("after"))
    assert store.span_total == 2
    await store.close()

    reopened = await open_store(tmp_path / "d")
    assert reopened.span_total == 2
    assert reopened.traces.get("lost") is None and reopened.traces.get("after") is not None
    await reopened.close()


async def test_a_partial_append_is_cut_off_the_log(tmp_path: Path) -> None:
    disk = SwitchableDisk()
    store = await open_store(tmp_path / "d", disk)
    await asyncio.gather(*(store.ingest(spans(f"ok-{i}", 3)) for i in range(5)))
    assert store._wal is not None
    segment = store._wal.directory / f"wal-{store._wal.seq:012d}.log"
    size = segment.stat().st_size
    disk.fail_writes = True
    results = await asyncio.gather(*(store.ingest(spans(f"lost-{i}", 3)) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert segment.stat().st_size == size, "the half-written group is truncated away"
    assert store.span_total == 15
    # kill -9 now (no close, no snapshot): replay counts exactly what was acknowledged.
    reopened = await open_store(tmp_path / "d")
    assert reopened.span_total == 15
    await reopened.close()
    await store.close()


class CountingDisk(FileSystem):
    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)


async def test_concurrent_writes_share_an_fsync(tmp_path: Path) -> None:
    disk = CountingDisk()
    store = await open_store(tmp_path / "d", disk)
    await asyncio.gather(*(store.ingest(spans(f"t-{i}")) for i in range(200)))
    assert store.span_total == 200
    assert disk.fsyncs <= 3, f"group commit: 200 concurrent writes took {disk.fsyncs} fsyncs"
    await store.close()


class _V1Snapshot(msgspec.Struct):
    version: int
    wal_seq: int
    span_total: int
    timeline: object
    spans: list[Span]


async def test_a_data_dir_of_the_previous_format_still_loads(tmp_path: Path) -> None:
    """Segments without the format magic (``[length][crc32 of payload]`` records) and bare msgpack snapshots."""
    data = tmp_path / "old"
    (data / "wal").mkdir(parents=True)
    timeline, traces = Timeline(TimelineSettings()), TraceIndex(100, 86_400_000)
    in_snapshot = spans("in-snapshot", 4)
    for span in in_snapshot:
        timeline.add(span, span_time_ms(span))
        traces.add(span)
    old = _V1Snapshot(1, 3, 4, timeline.snapshot(), in_snapshot)
    (data / "snapshot-000000000003.bin").write_bytes(msgspec.msgpack.encode(old))
    records = b""
    for payload in (encode_wire(spans("in-log-1", 2)), encode_wire(spans("in-log-2", 3))):
        records += struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    (data / "wal" / "wal-000000000003.log").write_bytes(records)

    store = await open_store(data)
    assert store.span_total == 9
    assert (await store.health()).degraded is None
    await store.ingest(spans("new", 1))
    await store.close()  # a snapshot in the new format
    reopened = await open_store(data)
    assert reopened.span_total == 10
    for trace_id, count in (("in-snapshot", 4), ("in-log-1", 2), ("in-log-2", 3), ("new", 1)):
        trace = reopened.traces.get(trace_id)
        assert trace is not None and len(trace.spans) == count, trace_id
    await reopened.close()


async def test_two_snapshot_generations_and_the_log_since_the_older_are_kept(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "d")
    for round_ in range(4):
        await store.ingest(spans(f"r{round_}"))
        await store._snapshot()
    snapshots = sorted(p.name for p in (tmp_path / "d").glob("snapshot-*.bin"))
    assert len(snapshots) == 2
    older = int(snapshots[0].split("-")[1].split(".")[0])
    assert store._wal is not None
    assert store._wal.segments()[0] == older, "the log since the older snapshot is kept, nothing before it"
    await store.close()


async def test_a_snapshot_that_does_not_read_back_is_quarantined_and_costs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that returns other bytes than were written: the new snapshot is moved aside, nothing retired."""
    import tokentrace.api.stores.embedded as embedded

    store = await open_store(tmp_path / "d")
    await store.ingest(spans("a", 2))
    await store._snapshot()
    await store.ingest(spans("b", 3))
    before = sorted(p.name for p in (tmp_path / "d").rglob("*.*"))

    def reads_back_changed(raw: bytes) -> tuple[memoryview, bool]:
        raise embedded.DamagedFile("checksum mismatch")

    monkeypatch.setattr(embedded, "open_snapshot", reads_back_changed)
    await store._snapshot()
    monkeypatch.undo()
    quarantined = store.quarantine.files()
    assert len(quarantined) == 1
    assert set(before) <= {p.name for p in (tmp_path / "d").rglob("*.*")}, "nothing older was retired"
    health = await store.health()
    assert health.healthy and health.degraded is not None and quarantined[0] in health.degraded
    (store.quarantine.folder / quarantined[0]).rename(tmp_path / "inspected")  # the operator takes it away
    assert (await store.health()).degraded is None, "degraded while, and only while, the file is in quarantine"
    await store.ingest(spans("c", 1))
    store._closed = True  # crash: no final snapshot
    assert store._wal is not None
    await store._wal.close()
    reopened = await open_store(tmp_path / "d")
    assert reopened.span_total == 6
    await reopened.close()


async def test_when_every_snapshot_is_damaged_the_loss_is_named(tmp_path: Path) -> None:
    """Two bad snapshot generations (a double failure): what the log still holds is recovered, the gap is named."""
    data = tmp_path / "d"
    store = await open_store(data)
    for round_ in range(3):
        await store.ingest(spans(f"r{round_}", 2))
        await store._snapshot()
    await store.ingest(spans("last", 3))
    store._closed = True  # crash: no final snapshot
    assert store._wal is not None
    await store._wal.close()
    for path in data.glob("snapshot-*.bin"):
        path.write_bytes(path.read_bytes()[:-1])

    reopened = await open_store(data)
    assert reopened.span_total == 2 + 3, "the log since the older snapshot is replayed"
    degraded = (await reopened.health()).degraded
    assert degraded is not None and "missing" in degraded and "snapshot-" in degraded
    assert len(reopened.quarantine.files()) == 2
    await reopened.close()
