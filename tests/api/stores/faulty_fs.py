"""File systems that fail the way a full or broken disk does, for the write-ahead log's ``fs`` seam."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from tokentrace.api.stores.fsio import FileSystem

__all__ = ["FullDisk", "SwitchableDisk"]


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk(FileSystem):
    """Every write and fsync fails with ENOSPC."""

    def write_all(self, fd: int, data: bytes) -> None:
        raise _enospc()

    def fsync(self, fd: int) -> None:
        raise _enospc()

    def probe(self, path: Path, size: int) -> None:
        raise _enospc()


class SwitchableDisk(FileSystem):
    """A real file system until ``fail_writes`` or ``fail_fsync`` is set; counts the probes made meanwhile.

    A failing write writes half its bytes first (a partial append), as a disk filling up mid-write does.
    """

    def __init__(self) -> None:
        self.fail_writes = False
        self.fail_fsync = False
        self.probes = 0

    def write_all(self, fd: int, data: bytes) -> None:
        if self.fail_writes:
            super().write_all(fd, data[: len(data) // 2])
            raise _enospc()
        super().write_all(fd, data)

    def fsync(self, fd: int) -> None:
        if self.fail_fsync:
            raise _enospc()
        super().fsync(fd)

    def probe(self, path: Path, size: int) -> None:
        self.probes += 1
        if self.fail_writes or self.fail_fsync:
            raise _enospc()
        super().probe(path, size)
