"""Fan-out: every span to several transports; one failing transport does not stop the others."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from tokentrace.core.span import Span

from .base import BaseTransport, SupportsStats, Transport, TransportStats

__all__ = ["MultiTransport"]

log = logging.getLogger(__name__)


class MultiTransport(BaseTransport):
    """Sends each batch to every transport in turn (e.g. a local file and the HTTP collector).

    An exception from one transport is logged and counted in this transport's ``failed_attempts``;
    the others still get the spans. ``stats()`` has the fan-out's own counters (its queue depth is the
    children's total), ``children_stats()`` those of the transports.
    """

    name = "multi"

    def __init__(self, *transports: Transport) -> None:
        super().__init__()
        if not transports:
            raise ValueError("MultiTransport needs at least one transport")
        self.transports: tuple[Transport, ...] = transports

    def send(self, spans: Sequence[Span]) -> None:
        """Give ``spans`` to every transport."""
        for transport in self.transports:
            self._call(transport, "send", spans)

    def flush(self, timeout: float | None = None) -> None:
        """Flush every transport, all within ``timeout`` seconds in total."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for transport in self.transports:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._call(transport, "flush", left)

    def close(self) -> None:
        """Close every transport."""
        for transport in self.transports:
            self._call(transport, "close")

    def children_stats(self) -> list[TransportStats]:
        """Counters of the transports that report them."""
        return [t.stats() for t in self.transports if isinstance(t, SupportsStats)]

    def _queue_depth(self) -> int:
        return sum(s.queue_depth for s in self.children_stats())

    def _call(self, transport: Transport, method: str, *args: object) -> None:
        try:
            getattr(transport, method)(*args)
        except Exception:
            self._count("failed_attempts")
            log.exception("transport %r failed in %s(); the other transports carry on", transport, method)
