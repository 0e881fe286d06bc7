"""Seed-001 style reporting: ``Reporter(app, url).report(span)`` over the HTTP transport."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import msgspec

from tokentrace.core.span import Span

from .transports.base import TransportStats
from .transports.http import HTTPTransport

__all__ = ["Reporter"]


class Reporter:
    """Reports finished spans to a tokentrace server as ``app``; never blocks, never raises on delivery.

    Extra keyword arguments (``token``, ``batch_size``, ``flush_interval``, ...) go to ``HTTPTransport``.
    """

    def __init__(self, app: str, url: str, **http_options: Any) -> None:
        self.app = app
        self.transport = HTTPTransport(url, **http_options)

    def report(self, span: Span) -> None:
        """Queue one span; a span without ``caller`` is reported with ``caller = app``."""
        self.transport.send([self._as_app(span)])

    def report_many(self, spans: Iterable[Span]) -> None:
        """Queue several spans at once."""
        self.transport.send([self._as_app(span) for span in spans])

    def flush(self, timeout: float | None = None) -> None:
        """Wait until queued spans are delivered (at most ``timeout`` seconds)."""
        self.transport.flush(timeout)

    def close(self) -> None:
        """Deliver what is queued and stop."""
        self.transport.close()

    def stats(self) -> TransportStats:
        return self.transport.stats()

    def _as_app(self, span: Span) -> Span:
        return span if span.caller else msgspec.structs.replace(span, caller=self.app)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
