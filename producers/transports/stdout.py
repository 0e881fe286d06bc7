"""Spans to standard output, one JSON object per line (the span format's JSON field names, as ``POST /spans`` takes them)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from tokentrace.core.codec import encode_json
from tokentrace.core.span import Span

from .base import BaseTransport

__all__ = ["StdoutTransport", "encode_lines"]

log = logging.getLogger(__name__)


def encode_lines(spans: Sequence[Span]) -> bytes:
    """Spans as JSON Lines: one compact JSON object per span, each ending in a newline."""
    return b"".join([encode_json(span) + b"\n" for span in spans])


class StdoutTransport(BaseTransport):
    """Writes each span as a JSON line to ``stream`` (default: the current ``sys.stdout``)."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False

    def send(self, spans: Sequence[Span]) -> None:
        """Write ``spans`` now; write errors are logged and counted, never raised."""
        if not spans:
            return
        if self._closed:
            self._count("dropped", len(spans))
            return
        try:
            text = encode_lines(spans).decode()
            stream = self._stream or sys.stdout
            with self._lock:
                stream.write(text)
                stream.flush()
        except Exception as exc:
            self._count("failed_attempts")
            self._count("dropped", len(spans))
            log.warning("stdout transport: could not write %d spans: %s", len(spans), exc)
        else:
            self._count("sent", len(spans))

    def close(self) -> None:
        """Stop writing (the stream itself is left open)."""
        self._closed = True
