"""Writes queued for one settled bucket (a back-fill), applied in bulk when the bucket is read or flushed.

A settled bucket is kept frozen (tokentrace/core/frozen.py): each pass over its bytes costs about the same however
few spans it applies, so the timeline queues what reaches it and applies it in one pass. Writes arrive as spans
(``Timeline.add_many``) or as compiled batches' spans, which wait as rows in the timeline's ``frozen.Backlog``
(``Timeline.add_batch``). A bucket waits for one kind at a time: a write of the other kind has what waits applied
first, so every bucket counts its spans in the order they came, as the caps require.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokentrace.core.span import Span

__all__ = ["DeferredWrites"]


class DeferredWrites:
    """What waits for one bucket: ``spans`` themselves, or ``compiled`` spans queued in the backlog (one kind)."""

    __slots__ = ("compiled", "spans")

    def __init__(self, compiled: int = 0) -> None:
        self.spans: list[Span] = []
        self.compiled = compiled

    @property
    def count(self) -> int:
        return len(self.spans) + self.compiled

    def add_spans(self, spans: Sequence[Span]) -> None:
        assert not self.compiled, "apply the compiled spans first"
        self.spans.extend(spans)
