"""A transport that discards spans: for tests, benchmarks and switching tracing off."""

from __future__ import annotations

from collections.abc import Sequence

from tokentrace.core.span import Span

from .base import BaseTransport

__all__ = ["NoopTransport"]


class NoopTransport(BaseTransport):
    """Accepts spans and drops them without counting (so it costs nothing)."""

    name = "noop"

    def send(self, spans: Sequence[Span]) -> None:
        """Discard ``spans``."""
