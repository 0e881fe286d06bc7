"""Which trace and which step are active here: context variables, so asyncio tasks and threads each see
their own (a task started inside a step inherits it as its parent)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .trace import SpanScope, Trace

__all__ = ["current_span", "current_trace"]

#: The innermost ``with tracer.start(...)`` block.
TRACE: ContextVar[Trace | None] = ContextVar("tokentrace_trace", default=None)
#: The innermost ``with trace.span(...)`` block.
SCOPE: ContextVar[SpanScope | None] = ContextVar("tokentrace_span", default=None)


def current_trace() -> Trace | None:
    """The trace of the innermost ``with tracer.start(...)`` (or step) block here, if any."""
    trace = TRACE.get()
    if trace is None:
        scope = SCOPE.get()
        return None if scope is None else scope.trace
    return trace


def current_span() -> SpanScope | None:
    """The innermost ``with trace.span(...)`` step here, if any."""
    return SCOPE.get()
