"""Seed-001 reporting: ``Reporter(source, url).report(span)``, as the seed's ``NewReporter(source, url)``.

By default each span goes to ``POST {url}/mist`` as a MIST ``trace.span`` message with its checksum, so
the same call feeds a tokentrace server and any server speaking the seed's protocol. ``protocol="spans"``
posts batches to tokentrace's own ``POST /spans`` instead (fewer requests; a tokentrace server only).
An empty ``url`` discards every span (the seed's no-op mode).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, Literal, Self

import msgspec

from tokentrace.core.span import Span

from .transports.base import BaseTransport, TransportStats
from .transports.http import HTTPTransport
from .transports.mist import MistTransport
from .transports.noop import NoopTransport

__all__ = ["ReportProtocol", "Reporter"]

ReportProtocol = Literal["mist", "spans"]


class Reporter:
    """Reports finished spans as ``source``; never blocks, never raises on delivery.

    A span without ``caller`` is reported with ``caller = source`` (the MIST envelope's ``source``).
    Extra keyword arguments (``token``, ``max_queue``, ``flush_interval``, ...) go to the HTTP transport.
    """

    def __init__(self, source: str, url: str, *, protocol: ReportProtocol = "mist", **http_options: Any) -> None:
        self.source = source
        self.protocol = protocol
        self.transport: BaseTransport
        if protocol not in ("mist", "spans"):
            raise ValueError(f"protocol must be 'mist' or 'spans', got {protocol!r}")
        if not url:
            self.transport = NoopTransport()
        elif protocol == "mist":
            self.transport = MistTransport(url, source, **http_options)
        else:
            self.transport = HTTPTransport(url, **http_options)

    @property
    def app(self) -> str:
        """The reporting service (the name before seed-001 compatibility; same as ``source``)."""
        return self.source

    def report(self, span: Span) -> None:
        """Queue one span."""
        self.transport.send([self._as_source(span)])

    def report_many(self, spans: Iterable[Span]) -> None:
        """Queue several spans at once."""
        self.transport.send([self._as_source(span) for span in spans])

    def flush(self, timeout: float | None = None) -> None:
        """Wait until queued spans are delivered (at most ``timeout`` seconds)."""
        self.transport.flush(timeout)

    def close(self) -> None:
        """Deliver what is queued and stop."""
        self.transport.close()

    def stats(self) -> TransportStats:
        return self.transport.stats()

    def _as_source(self, span: Span) -> Span:
        return span if span.caller else msgspec.structs.replace(span, caller=self.source)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
