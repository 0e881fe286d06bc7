"""Where rules created through the API, and silences, survive restarts.

A repository stores one :class:`Snapshot` and hands it back: two methods, so a Redis or SQL store is a
small class. Config and code rules are not stored; they are restored from config on every start.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Protocol

import msgspec

from tokentrace.core.alerts import AlertRule

__all__ = [
    "FileRuleRepository",
    "MemoryRuleRepository",
    "RepositoryConflict",
    "RuleRepository",
    "Snapshot",
    "StoredRule",
]


class StoredRule(msgspec.Struct, frozen=True):
    """A rule created through the API, with the id it was given."""

    rule_id: str
    rule: AlertRule
    created_ms: int


class Snapshot(msgspec.Struct, frozen=True):
    """Everything persisted: API rules in creation order and silences (rule name → end, epoch ms).

    ``revision`` counts saves in a shared repository: a save based on an older revision is a conflict.
    """

    version: int = 1
    rules: list[StoredRule] = []
    silences: dict[str, int] = {}
    revision: int = 0


class RepositoryConflict(Exception):
    """Another process saved the shared repository since this snapshot was loaded: load and try again."""


class RuleRepository(Protocol):
    """Loads and replaces the stored :class:`Snapshot`. ``save`` must be atomic: all or nothing.

    A repository with ``shared = True`` is written by several processes: it is loaded again before each
    use, and its ``save`` raises :class:`RepositoryConflict` unless the snapshot's revision is the stored
    one. Without the attribute a repository is taken as private to this process.
    """

    async def load(self) -> Snapshot: ...

    async def save(self, snapshot: Snapshot) -> None: ...


class MemoryRuleRepository:
    """Keeps the snapshot in memory: API rules last as long as the process (for tests and ephemeral runs)."""

    shared = False

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    async def load(self) -> Snapshot:
        return self.snapshot

    async def save(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


class FileRuleRepository:
    """A JSON file ``alerts.json`` in ``data_dir``, replaced atomically (temp file, fsync, rename, fsync dir).

    The file is created with mode 0600: webhook secrets are stored in it. A file that cannot be read or
    decoded is an error at load, never silently an empty rule set.
    """

    FILENAME = "alerts.json"
    shared = False

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / self.FILENAME
        self._decoder = msgspec.json.Decoder(Snapshot)

    async def load(self) -> Snapshot:
        return await asyncio.to_thread(self._load)

    async def save(self, snapshot: Snapshot) -> None:
        await asyncio.to_thread(self._save, msgspec.json.format(msgspec.json.encode(snapshot), indent=2))

    def _load(self) -> Snapshot:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Snapshot()
        try:
            snapshot = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"{self.path}: cannot read stored alert rules: {exc}") from None
        if snapshot.version != 1:
            raise ValueError(f"{self.path}: unsupported version {snapshot.version}")
        return snapshot

    def _save(self, data: bytes) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.FILENAME}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
