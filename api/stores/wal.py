"""A write-ahead log with group commit: a record is applied, and its write resolves, only once it is fsync'd.

Records are framed by ``wal_format`` (CRC32 over length and payload) in numbered segments ``wal-<seq>.log``.
``write`` queues a record with a callback; one flush task appends everything queued since the last flush in one
``write`` + ``fsync`` (group commit), then runs the callbacks in log order and resolves the group. So the state
the callbacks build is exactly the durable prefix of the log — a failed write is never applied.

Every append, fsync and segment switch happens under one lock (``exclusive``): a snapshot taken under it sees
state that matches the log position it records.

A failed append (ENOSPC, EIO) is cut off the segment (truncated to the last durable size), its writers get the
OSError, and the log refuses writes while a background task probes the disk with backoff; once a probe write
and fsync succeed, writes resume by themselves. ``failure`` says what is going on meanwhile.

Recovery (``recover``) reads every segment with the damage-tolerant scanner. A segment with damaged bytes
between intact records is never rewritten in place: its exact bytes are put in quarantine, and a clean segment
holding every intact record replaces it. A torn tail (a crash mid-append) is left as is: every open starts a
new segment, so nothing is ever appended after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from tokentrace.api.stores.fsio import FileSystem, fsync_dir
from tokentrace.api.stores.quarantine import Damage, Quarantine
from tokentrace.api.stores.wal_format import SEGMENT_MAGIC, frame, scan_segment

__all__ = ["LogUnavailable", "WriteAheadLog"]

log = logging.getLogger(__name__)
_PROBE = ".write-probe"


class _Group(NamedTuple):
    future: asyncio.Future[None]
    data: bytes
    callbacks: list[Callable[[], None]]


class LogUnavailable(OSError):
    """The log refuses writes until its disk takes writes again (see ``WriteAheadLog.failure``)."""


def segment_name(seq: int) -> str:
    return f"wal-{seq:012d}.log"


def segment_seq(path: Path) -> int:
    return int(path.stem.split("-")[1])


class WriteAheadLog:
    """Append-only, segmented, group-committed log of opaque payloads."""

    def __init__(
        self,
        directory: Path,
        quarantine: Quarantine,
        fs: FileSystem | None = None,
        flush_delay_s: float = 0.002,
        retry_initial_s: float = 0.25,
        retry_max_s: float = 10.0,
    ) -> None:
        self.directory = directory
        self.quarantine = quarantine
        self.fs = fs or FileSystem()
        self.flush_delay_s = flush_delay_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _PROBE).unlink(missing_ok=True)
        self.seq = -1
        self._fd = -1
        self._durable_size = 0  # bytes of the current segment known to be on disk
        self._dir_synced = False
        self._chunks: list[bytes] = []
        self._callbacks: list[Callable[[], None]] = []
        self._group: asyncio.Future[None] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._retrying: asyncio.Task[None] | None = None
        self._io = asyncio.Lock()
        self._wanted = 0  # parties waiting for exclusive(): the flush task lets go between groups for them
        #: Records queued for the next group flush.
        self.pending = 0
        #: Bytes in the current segment (snapshots are due past a size).
        self.bytes_written = 0
        #: Why writes are refused right now (None while the log takes writes).
        self.failure: str | None = None
        #: What recovery found damaged, one line per segment (empty when everything was intact).
        self.damage: list[Damage] = []

    def segments(self) -> list[int]:
        """Sequence numbers of the segments on disk, oldest first."""
        return sorted(segment_seq(p) for p in self.directory.glob("wal-*.log"))

    # ---------------------------------------------------------------- recovery
    def recover(self, from_seq: int) -> Iterator[bytes]:
        """Every intact payload in segments ``>= from_seq``, in order; damaged segments are quarantined and repaired."""
        segments = [seq for seq in self.segments() if seq >= from_seq]
        expected = from_seq
        for seq in segments:
            if seq != expected:
                missing = f"{segment_name(expected)}..{segment_name(seq - 1)}"
                self.damage.append(Damage(f"log segments {missing} are missing: the spans they held are lost"))
                log.error("write-ahead log: %s", self.damage[-1].text)
            expected = seq + 1
            path = self.directory / segment_name(seq)
            raw = path.read_bytes()
            scan = scan_segment(raw)
            if scan.damaged:
                note, moved = f"{path.name}: {scan.describe()}", None
                try:
                    moved = self.quarantine.keep_copy(path).name
                    self._repair(path, raw, scan.records)
                    note += f"; original kept as quarantine/{moved}"
                except OSError as exc:  # e.g. a full disk: the original stays, repaired at a later start
                    note += f"; left in place, not repaired yet ({exc})"
                self.damage.append(Damage(note, moved))
                log.error("write-ahead log segment damaged: %s", note)
            elif scan.torn_tail:
                log.warning(
                    "%s: ignoring a torn tail of %d bytes (an append cut by a crash)", path.name, scan.torn_tail
                )
            for start, end in scan.records:
                yield raw[start:end]

    def _repair(self, path: Path, raw: bytes, records: list[tuple[int, int]]) -> None:
        """Replace ``path`` atomically by a clean segment holding ``records`` (its original is in quarantine)."""
        tmp = path.with_suffix(".repair")
        with open(tmp, "wb") as handle:
            handle.write(SEGMENT_MAGIC)
            for start, end in records:
                payload = raw[start:end]
                handle.write(frame(payload))
                handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(self.directory)

    def start(self) -> None:
        """Open a new segment after every existing one (appends never follow a torn tail)."""
        segments = self.segments()
        self._open_segment(segments[-1] + 1 if segments else 0)

    def _open_segment(self, seq: int) -> None:
        fd = self.fs.open_append(self.directory / segment_name(seq))
        if self._fd >= 0:
            self.fs.close(self._fd)
        self._fd, self.seq = fd, seq
        self._durable_size = self.bytes_written = 0
        self._dir_synced = False

    # ------------------------------------------------------------------ writes
    def write(self, payload: bytes, on_durable: Callable[[], None]) -> asyncio.Future[None]:
        """Queue ``payload``; once it is fsync'd, ``on_durable`` runs and the returned future resolves.

        Raises ``LogUnavailable`` at once while the log refuses writes; the future fails with OSError when the
        append fails (then ``on_durable`` never runs and the record is not in the log).
        """
        if self.failure is not None:
            raise LogUnavailable(self.failure)
        self._chunks.append(frame(payload))
        self._chunks.append(payload)
        self._callbacks.append(on_durable)
        self.pending += 1
        if self._group is None:
            loop = asyncio.get_running_loop()
            self._group = loop.create_future()
            if self._flushing is None or self._flushing.done():
                self._flushing = loop.create_task(self._flush_groups())
        return self._group

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Held, no append is under way and every appended record has been applied."""
        self._wanted += 1
        try:
            async with self._io:
                yield
        finally:
            self._wanted -= 1

    def _take(self) -> _Group | None:
        """The records queued since the last take, as one group."""
        if self._group is None:
            return None
        group = _Group(self._group, b"".join(self._chunks), self._callbacks)
        self._group, self._chunks, self._callbacks, self.pending = None, [], [], 0
        return group

    async def _flush_groups(self) -> None:
        """Append group after group; while one is fsync'd, the one before it is applied (pipelined)."""
        loop = asyncio.get_running_loop()
        while self._group is not None:
            await asyncio.sleep(self.flush_delay_s)
            async with self._io:
                group = self._take()
                if group is None:  # failed while this task waited for the lock
                    continue
                appending = loop.run_in_executor(None, self._append, group.data)
                while group is not None:
                    try:
                        await appending
                    except OSError as exc:
                        self._fail(exc, group.future, len(group.callbacks), len(group.data))
                        break
                    done, group = group, None if self._wanted else self._take()
                    if group is not None:
                        appending = loop.run_in_executor(None, self._append, group.data)
                    for callback in done.callbacks:
                        try:
                            callback()
                        except Exception:  # one bad record must not stall the log
                            log.exception("applying a durable log record failed")
                    done.future.set_result(None)

    def _append(self, data: bytes) -> None:
        """Append and fsync (in a thread); on failure cut the segment back to its durable size."""
        if self._durable_size == 0:
            data = SEGMENT_MAGIC + data
        try:
            self.fs.write_all(self._fd, data)
            self.fs.fsync(self._fd)
            if not self._dir_synced:
                self.fs.fsync_dir(self.directory)
                self._dir_synced = True
        except OSError:
            try:
                self.fs.truncate(self._fd, self._durable_size)
            except OSError:
                log.exception("cannot cut a failed append off %s (retried before any write)", segment_name(self.seq))
            raise
        self._durable_size += len(data)
        self.bytes_written = self._durable_size

    def _fail(self, exc: OSError, group: asyncio.Future[None], count: int, size: int) -> None:
        """Fail this group and whatever queued behind it; refuse writes until a probe succeeds."""
        log.error("write-ahead log append failed for %d records: %s; refusing writes until it works", count, exc)
        self.failure = self._refusal(exc, self.retry_initial_s)
        for future in (group, self._group):
            if future is not None:
                future.set_exception(exc)
                future.exception()  # mark retrieved: every waiter re-raises it anyway
        self._group, self._chunks, self._callbacks, self.pending = None, [], [], 0
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry(exc, max(size, 64 * 1024)))

    async def _retry(self, exc: OSError, probe_size: int) -> None:
        """Probe the disk with backoff until a write and fsync succeed; then take writes again."""
        delay = self.retry_initial_s
        loop = asyncio.get_running_loop()
        while True:
            self.failure = self._refusal(exc, delay)
            await asyncio.sleep(delay)
            async with self._io:
                try:
                    await loop.run_in_executor(None, self._probe, probe_size)
                except OSError as again:
                    exc, delay = again, min(delay * 2, self.retry_max_s)
                    continue
            self.failure = None
            log.warning("write-ahead log: the disk takes writes again; accepting writes")
            return

    @staticmethod
    def _refusal(exc: OSError, delay: float) -> str:
        return f"cannot write the log: {exc}; writes resume by themselves once it can (next try in {delay:g}s)"

    def _probe(self, size: int) -> None:
        self.fs.truncate(self._fd, self._durable_size)
        self.fs.probe(self.directory / _PROBE, size)
        self.fs.fsync(self._fd)  # the cut is durable before anything is appended after it

    # ----------------------------------------------------------- maintenance
    def rotate(self) -> int:
        """Start a new segment; returns its number. Hold ``exclusive()``: the old one is then fully durable."""
        assert self._io.locked(), "rotate() needs exclusive()"
        self._open_segment(self.seq + 1)
        return self.seq

    def drop_before(self, seq: int) -> None:
        """Delete segments older than ``seq`` (their content is in a verified snapshot)."""
        for old in self.segments():
            if old < seq:
                (self.directory / segment_name(old)).unlink(missing_ok=True)

    async def close(self) -> None:
        """Wait for pending flushes, stop probing, close the segment."""
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if self._retrying is not None:
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)
        if self._fd >= 0:
            self.fs.close(self._fd)
            self._fd = -1
