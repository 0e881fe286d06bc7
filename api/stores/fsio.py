"""The file-system calls the write-ahead log makes, behind one small class: the seam tests inject failures through.

Only the write path goes through it (append, fsync, truncate, the writability probe); recovery reads files
directly. ``FileSystem`` is the real thing; a test subclass can make ``write_all`` or ``fsync`` raise ENOSPC.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FileSystem", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSystem:
    """Append-only file descriptors, as the write-ahead log uses them."""

    def open_append(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write_all(self, fd: int, data: bytes) -> None:
        """Write every byte (``os.write`` may write fewer) or raise OSError."""
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync_dir(self, path: Path) -> None:
        fsync_dir(path)

    def close(self, fd: int) -> None:
        os.close(fd)

    def probe(self, path: Path, size: int) -> None:
        """Write ``size`` bytes to ``path``, fsync, remove it: raises OSError while the disk cannot take them."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.write_all(fd, bytes(size))
            self.fsync(fd)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
