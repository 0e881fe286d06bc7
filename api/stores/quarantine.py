"""Damaged data files are moved aside into ``<data dir>/quarantine/``, never deleted or rewritten.

A quarantined file keeps its name (``.1``, ``.2``, ... when the name is taken), and its bytes are exactly what
was found. While the folder holds anything, the server reports ``degraded``; an operator inspects the files
(``tokentrace check-data``) and deletes them to clear that status.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

from tokentrace.api.stores.fsio import fsync_dir

__all__ = ["Damage", "Quarantine"]


class Damage(NamedTuple):
    """What recovery found wrong with one file, and the name it was quarantined under (None: not moved)."""

    text: str
    quarantined: str | None = None


class Quarantine:
    """The quarantine folder of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "quarantine"

    def files(self) -> list[str]:
        """Names of the quarantined files, sorted."""
        try:
            return sorted(entry.name for entry in os.scandir(self.folder) if entry.is_file())
        except FileNotFoundError:
            return []

    def _target(self, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target, n = self.folder / name, 0
        while target.exists():
            n += 1
            target = self.folder / f"{name}.{n}"
        return target

    def move(self, path: Path) -> Path:
        """Move ``path`` aside (atomic rename); returns where it went."""
        target = self._target(path.name)
        os.replace(path, target)
        fsync_dir(self.folder)
        fsync_dir(path.parent)
        return target

    def keep_copy(self, path: Path) -> Path:
        """Put ``path``'s exact bytes aside and leave ``path`` in place (a hard link, a copy where links fail)."""
        target = self._target(path.name)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
            with open(target, "rb+") as handle:
                os.fsync(handle.fileno())
        fsync_dir(self.folder)
        return target
