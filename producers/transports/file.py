"""Spans appended to a JSON Lines file, and a reader that survives a writer's crash.

Each ``send`` appends whole lines with one ``O_APPEND`` write. A writer killed mid-write leaves a torn last
line; the next writer that opens the file first ends that line, so new spans never merge into it, and
``read_spans`` skips and counts such lines instead of failing. With ``max_bytes`` the file is rotated like
``logging.handlers.RotatingFileHandler`` (``spans.jsonl`` → ``spans.jsonl.1`` → …); rotation assumes one
writing process per file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tokentrace.core.span import Span

from .base import BaseTransport
from .stdout import encode_lines

__all__ = ["FileTransport", "ReadResult", "read_spans"]

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(Span)


class FileTransport(BaseTransport):
    """Appends spans to ``path`` as JSON lines (the file and its folder are created when missing).

    ``max_bytes``: rotate before a write would make the file larger (``None``: never rotate).
    ``backups``: rotated files to keep. ``fsync``: fsync after every write (durable, slower).
    """

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        backups: int = 3,
        fsync: bool = False,
    ) -> None:
        super().__init__()
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1 (or None)")
        if backups < 0:
            raise ValueError("backups must be >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._torn = False  # our last write failed part-way: end that line before the next one
        self._closed = False
        self._last_error: str | None = None

    def send(self, spans: Sequence[Span]) -> None:
        """Append ``spans`` now; I/O errors are logged and counted (``dropped``), never raised."""
        if not spans:
            return
        data = encode_lines(spans)
        with self._lock:
            if self._closed:
                self._count("dropped", len(spans))
                return
            try:
                self._write(data)
            except OSError as exc:
                self._fail(exc, len(spans))
                return
            self._last_error = None
        self._count("sent", len(spans))

    def flush(self, timeout: float | None = None) -> None:
        """Writes reach the OS at once; this also fsyncs them to disk."""
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    log.warning("file transport: fsync %s failed: %s", self.path, exc)

    def close(self) -> None:
        """Close the file; later sends are dropped and counted."""
        with self._lock:
            self._closed = True
            self._close_fd()

    def _write(self, data: bytes) -> None:
        fd = self._open()
        if self.max_bytes is not None and self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
            fd = self._open()
        if self._torn:
            data = b"\n" + data
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:] if written else data)
        except OSError:
            self._torn = written > 0
            self._size += written
            raise
        self._torn = False
        self._size += written
        if self.fsync:
            os.fsync(fd)

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                size = self._heal(fd, size)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, size
        return fd

    def _heal(self, fd: int, size: int) -> int:
        """End a torn last line left by a crashed writer, so the next span starts on a line of its own."""
        with open(self.path, "rb") as reader:
            reader.seek(size - 1)
            last = reader.read(1)
        if last and last != b"\n":
            os.write(fd, b"\n")
            return size + 1
        return size

    def _rotate(self) -> None:
        self._close_fd()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.backups - 1, 0, -1):
            source = self.path.with_name(f"{self.path.name}.{index}")
            if source.exists():
                source.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _fail(self, exc: OSError, n: int) -> None:
        self._count("failed_attempts")
        self._count("dropped", n)
        message = f"{type(exc).__name__}: {exc}"
        if message != self._last_error:  # log each new kind of failure once, not every span
            log.warning("file transport: could not append %d spans to %s: %s", n, self.path, message)
            self._last_error = message
        self._close_fd()  # reopen (and heal) on the next send


@dataclass
class ReadResult:
    """What ``read_spans`` found: the spans, plus lines it could not use.

    ``torn``: 1 when the file ends in an incomplete line (a writer crashed mid-write), else 0.
    ``skipped``: complete lines that are not valid spans (e.g. a torn line a later writer ended), with
    ``errors`` describing the first few of them.
    """

    spans: list[Span] = field(default_factory=list)
    torn: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def read_spans(path: str | os.PathLike[str], *, max_errors: int = 10) -> ReadResult:
    """Read a JSON Lines span file, skipping (and counting) torn or invalid lines; never raises for content.

    A final line without newline that still decodes is a complete span (only its newline was lost).
    """
    result = ReadResult()
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            complete = line.endswith(b"\n")
            if not line.strip():
                continue
            try:
                result.spans.append(_decoder.decode(line))
            except msgspec.DecodeError as exc:
                if not complete:
                    result.torn = 1
                    continue
                result.skipped += 1
                if len(result.errors) < max_errors:
                    result.errors.append(f"line {number}: {exc}")
    return result
