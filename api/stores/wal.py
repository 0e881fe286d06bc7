"""A write-ahead log with group commit: a record is on disk (fsync'd) before its write resolves.

Records are ``[length u32][crc32 u32][payload]`` appended to numbered segments ``wal-<seq>.log``.
Concurrent writers share one fsync: the first write of a group schedules a flush; everything written
until that flush runs is covered by it. A torn or corrupt tail (a crash mid-write) ends replay of its
segment and is truncated away, so the next append starts on a clean boundary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WriteAheadLog"]

log = logging.getLogger(__name__)
_HEADER = struct.Struct("<II")


def segment_name(seq: int) -> str:
    return f"wal-{seq:012d}.log"


def segment_seq(path: Path) -> int:
    return int(path.stem.split("-")[1])


class WriteAheadLog:
    """Append-only, segmented, group-committed log of opaque payloads."""

    def __init__(self, directory: Path, flush_delay_s: float = 0.002) -> None:
        self.directory = directory
        self.flush_delay_s = flush_delay_s
        directory.mkdir(parents=True, exist_ok=True)
        segments = self.segments()
        self.seq = segments[-1] if segments else 0
        self._file = open(directory / segment_name(self.seq), "ab")  # noqa: SIM115 - long-lived handle
        self._group: asyncio.Future[None] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.pending = 0
        self.bytes_written = self._file.tell()

    def segments(self) -> list[int]:
        """Sequence numbers of the segments on disk, oldest first."""
        return sorted(segment_seq(p) for p in self.directory.glob("wal-*.log"))

    def replay(self, from_seq: int) -> Iterator[bytes]:
        """Every intact payload in segments ``>= from_seq``, in order; torn tails are truncated."""
        for seq in self.segments():
            if seq < from_seq:
                continue
            path = self.directory / segment_name(seq)
            data = path.read_bytes()
            pos = 0
            while pos + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, pos)
                start, end = pos + _HEADER.size, pos + _HEADER.size + length
                if end > len(data) or zlib.crc32(data[start:end]) != crc:
                    break
                yield data[start:end]
                pos = end
            if pos != len(data):
                log.warning("truncating %d torn bytes at the end of %s", len(data) - pos, path.name)
                with open(path, "r+b") as handle:
                    handle.truncate(pos)
                if seq == self.seq:
                    self._file.seek(0, os.SEEK_END)

    def write(self, payload: bytes) -> asyncio.Future[None]:
        """Append ``payload`` now; the returned future resolves once it is fsync'd (or fails with OSError)."""
        self._file.write(_HEADER.pack(len(payload), zlib.crc32(payload)))
        self._file.write(payload)
        self.bytes_written += _HEADER.size + len(payload)
        self.pending += 1
        if self._group is None:
            loop = asyncio.get_running_loop()
            self._group = loop.create_future()
            if self._flushing is None or self._flushing.done():
                self._flushing = loop.create_task(self._flush_groups())
        return self._group

    async def _flush_groups(self) -> None:
        while self._group is not None:
            await asyncio.sleep(self.flush_delay_s)
            group, self._group = self._group, None
            count, self.pending = self.pending, 0
            try:
                self._file.flush()
                await asyncio.get_running_loop().run_in_executor(None, os.fsync, self._file.fileno())
            except OSError as exc:
                log.error("write-ahead log fsync failed for %d records: %s", count, exc)
                group.set_exception(exc)
                group.exception()  # mark retrieved: every waiter re-raises it anyway
            else:
                group.set_result(None)

    def rotate(self) -> int:
        """Start a new segment; returns its sequence number. Earlier segments stay until ``drop_before``."""
        self._file.flush()
        os.fsync(self._file.fileno())  # records still waiting for a group flush live in this segment
        self._file.close()
        self.seq += 1
        self._file = open(self.directory / segment_name(self.seq), "ab")  # noqa: SIM115
        self.bytes_written = 0
        return self.seq

    def drop_before(self, seq: int) -> None:
        """Delete segments older than ``seq`` (their content is in a durable snapshot)."""
        for old in self.segments():
            if old < seq:
                (self.directory / segment_name(old)).unlink(missing_ok=True)

    async def close(self) -> None:
        """Wait for pending flushes, then close the segment."""
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            log.error("write-ahead log: final flush failed: %s", exc)
        finally:
            self._file.close()
