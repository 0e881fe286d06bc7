"""A trace (one workflow run) and its steps.

``Trace.record`` records one inference call as a span. ``Trace.span(name)`` opens a *step*: a span with its
own id that is timed by a ``with`` / ``async with`` block; spans recorded inside it (directly or in nested
steps, also from asyncio tasks started inside it) carry its id as ``parent_span_id``, so a multi-step
agent forms a tree. Spans are buffered and handed to the transport by ``Trace.end`` (or when the buffer
reaches the tracer's ``max_buffered_spans``).

A step emits a span when it knows its model (``trace.span(name, model=...)`` or ``step.record(model=...)``)
and recorded token counts or failed. A step that never names a model (say a vector search) or records no
tokens (say a cache hit) emits nothing, but its id still links its children.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Self

from tokentrace.core.ingest import CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE
from tokentrace.core.span import AttributeValue, Span, Status

from .budget import Budget, BudgetExceeded, Reservation
from .build import (
    check_attributes,
    check_model,
    check_number,
    check_status,
    check_text,
    check_tokens,
    make_span,
    new_span,
)
from .clock import now_ms, stamp
from .context import SCOPE, TRACE
from .ids import new_id

if TYPE_CHECKING:
    from .tracer import Tracer

__all__ = ["SpanScope", "Trace", "error_status"]

log = logging.getLogger(__name__)

_INF = float("inf")


def error_status(exc: BaseException) -> tuple[Status, str]:
    """Span status and error text for an exception: ``TimeoutError`` (also asyncio's) is a timeout."""
    status: Status = "timeout" if isinstance(exc, TimeoutError) else "error"
    text = str(exc)
    return status, f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cache_attributes(attributes: dict[str, AttributeValue], cache_read: int, cache_write: int) -> None:
    if cache_read:
        attributes[CACHE_READ_ATTRIBUTE] = cache_read
    if cache_write:
        attributes[CACHE_WRITE_ATTRIBUTE] = cache_write


class Trace:
    """One run of a named workflow; create it with ``Tracer.start``. Thread- and task-safe.

    As a context manager it becomes the current trace, marks the last span failed if the block raises
    (and re-raises), and calls ``end`` on exit.
    """

    __slots__ = (
        "_budget",
        "_ended",
        "_lock",
        "_recorded_exc",
        "_spans",
        "_token",
        "attributes",
        "caller",
        "id",
        "name",
        "tracer",
    )

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        trace_id: str,
        caller: str,
        attributes: dict[str, AttributeValue],
        budget: Budget | None,
    ) -> None:
        #: The tracer that started the trace; it prices and sends the trace's spans.
        self.tracer = tracer
        #: The trace id (UUID 4), shared by all its spans.
        self.id = trace_id
        self.name = name
        #: The service on every span of the trace.
        self.caller = caller
        #: Attributes on every span of the trace (the tracer's, then ``start``'s); read-only.
        self.attributes = attributes
        self._budget = budget
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self._ended = False
        self._token: Token[Trace | None] | None = None
        self._recorded_exc: BaseException | None = None

    @property
    def budget(self) -> Budget | None:
        return self._budget

    @property
    def ended(self) -> bool:
        return self._ended

    def record(
        self,
        *,
        model: str,
        provider: str = "",
        prompt_tokens: int | None = None,
        comp_tokens: int | None = None,
        total_tokens: int | None = None,
        latency_ms: float | None = None,
        cost_usd: float | None = None,
        status: Status = "ok",
        error: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        name: str | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Span:
        """Record one inference call as a span and return it.

        ``cost_usd`` defaults to the tracer's price table (``None`` for an unknown model). ``prompt_tokens``
        includes ``cache_read_tokens``/``cache_write_tokens`` (priced at cache rates, kept as the attributes
        ``gen_ai.usage.cache_read_input_tokens``/``gen_ai.usage.cache_creation_input_tokens`` that the
        server's ingest reads too).
        With ``latency_ms`` the span ends now and started ``latency_ms`` ago; without, it only has
        ``started_at`` (now). Inside a step of this trace the span's parent is that step. With a budget,
        raises ``BudgetExceeded`` (recording nothing) if the cost does not fit. Raises ValueError/TypeError
        for invalid values.
        """
        # The hot path: every check is inlined for the common case and falls back to the check_* helpers,
        # which raise the same errors ``Span`` would. ``build.make_span`` is the readable equivalent.
        if type(model) is not str or not model:
            model = check_model(model)
        if type(provider) is not str:
            provider = check_text(provider, "provider")
        if type(prompt_tokens) is not int or prompt_tokens < 0:
            prompt_tokens = check_tokens(prompt_tokens, "prompt_tokens")
        if type(comp_tokens) is not int or comp_tokens < 0:
            comp_tokens = check_tokens(comp_tokens, "comp_tokens")
        if total_tokens is None:
            if prompt_tokens is None:
                if comp_tokens is None:
                    raise ValueError(
                        "at least one token count is required (prompt_tokens, comp_tokens or total_tokens)"
                    )
                total_tokens = comp_tokens
            else:
                total_tokens = prompt_tokens if comp_tokens is None else prompt_tokens + comp_tokens
        else:
            total_tokens = check_tokens(total_tokens, "total_tokens")
        if latency_ms is not None and not (
            (type(latency_ms) is int or type(latency_ms) is float) and 0 <= latency_ms < _INF
        ):
            latency_ms = check_number(latency_ms, "latency_ms")
        if status != "ok":
            status = check_status(status)
        if error is not None and type(error) is not str:
            error = check_text(error, "error")
        if name is not None and type(name) is not str:
            name = check_text(name, "name")
        if attributes:
            attrs = check_attributes(attributes)
            if self.attributes:
                attrs = {**self.attributes, **attrs}
        else:
            attrs = dict(self.attributes) if self.attributes else {}
        if cache_read_tokens or cache_write_tokens:
            _cache_attributes(attrs, cache_read_tokens, cache_write_tokens)
        if cost_usd is not None:
            cost_usd = check_number(cost_usd, "cost_usd")
        elif prompt_tokens is not None or comp_tokens is not None:
            cost_usd = self.tracer.price(
                model, provider, prompt_tokens, comp_tokens, cache_read_tokens, cache_write_tokens
            )
        if self._budget is not None and cost_usd is not None:
            self._budget.charge(cost_usd)
        span = new_span()
        span.trace_id = self.id
        span.span_id = new_id()
        scope = SCOPE.get()
        if scope is not None and scope.trace is self:
            span.parent_span_id = scope.span_id
        span.name = self.name if name is None else name
        span.caller = self.caller
        span.model = model
        span.provider = provider
        span.prompt_tokens = prompt_tokens
        span.comp_tokens = comp_tokens
        span.total_tokens = total_tokens
        span.cost_usd = cost_usd
        now = time.time_ns() // 1_000_000
        if latency_ms is None:
            span.started_at = stamp(now)
        else:
            span.latency_ms = latency_ms
            span.started_at = stamp(now - (latency_ms if type(latency_ms) is int else round(latency_ms)))
            span.ended_at = stamp(now)
        if status != "ok":
            span.status = status
        if error is not None:
            span.error = error
        span.attributes = attrs
        self.add(span)
        return span

    def span(
        self,
        name: str,
        *,
        model: str | None = None,
        provider: str = "",
        attributes: Mapping[str, AttributeValue] | None = None,
        estimate_usd: float | None = None,
    ) -> SpanScope:
        """A step of this trace, to use as ``with`` / ``async with`` (or ``start()`` … ``end()``).

        With ``estimate_usd`` and a budget, entering the step reserves the estimate (``BudgetExceeded``
        before the call is made) and leaving it settles the actual cost.
        """
        return SpanScope(self, name, model, provider, attributes, estimate_usd)

    def record_error(self, exc: BaseException | str) -> None:
        """Mark the current step of this trace, or else its last recorded span, as failed.

        ``TimeoutError`` (also asyncio's) gives status ``timeout``, anything else ``error``.
        """
        scope = SCOPE.get()
        if scope is not None and scope.trace is self and not scope.done:
            scope.record_error(exc)
            return
        status: Status
        if isinstance(exc, str):
            status, text = "error", exc
        else:
            status, text = error_status(exc)
        with self._lock:
            last = self._spans[-1] if self._spans else None
            if last is not None:
                last.status = status
                last.error = text
        if last is None:
            log.warning("trace %r (%s): no unsent span to attach error %r to", self.name, self.id, text)
        if isinstance(exc, BaseException):
            self._recorded_exc = exc

    def end(self) -> None:
        """Hand the buffered spans to the transport. Later ``record`` calls are sent one by one."""
        with self._lock:
            spans, self._spans = self._spans, []
            self._ended = True
        if spans:
            self.tracer.send(spans)

    def add(self, span: Span) -> None:
        """Buffer a finished span of this trace (sent by ``end``, or now once the trace has ended or the
        buffer is full). For spans built elsewhere, such as an instrumented client's calls."""
        with self._lock:
            if self._ended:
                batch = [span]
            else:
                self._spans.append(span)
                if len(self._spans) < self.tracer.max_buffered_spans:
                    return
                batch, self._spans = self._spans, []
        self.tracer.send(batch)

    def _exit(self, exc: BaseException | None) -> None:
        if self._token is not None:
            try:
                TRACE.reset(self._token)
            except ValueError:  # left in another context than it was entered in
                TRACE.set(None)
            self._token = None
        if exc is not None and exc is not self._recorded_exc:
            self.record_error(exc)
        self.end()

    def __enter__(self) -> Self:
        self._token = TRACE.set(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)

    def __repr__(self) -> str:
        return f"Trace(name={self.name!r}, id={self.id!r}, ended={self._ended})"


class SpanScope:
    """A timed step of a trace: one span whose fields ``record`` sets and whose timing the block measures.

    ``record`` may be called several times (later values win), e.g. the model first and the token counts
    when the response arrives. On exit the step's span gets ``started_at``/``ended_at``, ``latency_ms``
    (unless recorded) and, if the block raised, status ``error``/``timeout`` and the error text; the
    exception is re-raised.
    """

    __slots__ = (
        "_attributes",
        "_cache_read",
        "_cache_write",
        "_comp",
        "_cost",
        "_error",
        "_estimate",
        "_latency",
        "_model",
        "_previous",
        "_prompt",
        "_provider",
        "_reservation",
        "_start_ms",
        "_started",
        "_status",
        "_t0",
        "_token",
        "_total",
        "done",
        "name",
        "parent_span_id",
        "span",
        "span_id",
        "trace",
    )

    def __init__(
        self,
        trace: Trace,
        name: str,
        model: str | None,
        provider: str,
        attributes: Mapping[str, AttributeValue] | None,
        estimate_usd: float | None,
    ) -> None:
        self.trace = trace
        self.name = check_text(name, "name")
        #: This step's span id; spans recorded inside the step name it as their parent.
        self.span_id = new_id()
        self.parent_span_id: str | None = None
        #: The span emitted on exit (``None`` before, or when the step never named a model).
        self.span: Span | None = None
        self.done = False
        self._model = None if model is None else check_model(model)
        self._provider = check_text(provider, "provider")
        self._attributes = check_attributes(attributes)
        self._estimate = None if estimate_usd is None else check_number(estimate_usd, "estimate_usd")
        self._prompt: int | None = None
        self._comp: int | None = None
        self._total: int | None = None
        self._cost: float | int | None = None
        self._latency: float | int | None = None
        self._status: Status = "ok"
        self._error: str | None = None
        self._cache_read = 0
        self._cache_write = 0
        self._reservation: Reservation | None = None
        self._token: Token[SpanScope | None] | None = None
        self._previous: SpanScope | None = None
        self._started = False
        self._start_ms = 0
        self._t0 = 0.0

    @property
    def reserved(self) -> bool:
        """Whether the step reserved an estimate of the trace's budget (it then settles the cost itself)."""
        return self._reservation is not None

    def start(self) -> Self:
        """Begin the step: reserve its estimate, make it the current step, start the clock."""
        if self._started:
            raise RuntimeError(f"step {self.name!r} already started")
        budget = self.trace.budget
        if budget is not None and self._estimate is not None:
            self._reservation = budget.reserve(self._estimate)
        self._started = True
        previous = SCOPE.get()
        if previous is not None and previous.trace is self.trace:
            self.parent_span_id = previous.span_id
        self._previous = previous
        self._token = SCOPE.set(self)
        self._start_ms = now_ms()
        self._t0 = time.perf_counter()
        return self

    def record(
        self,
        *,
        model: str | None = None,
        provider: str | None = None,
        prompt_tokens: int | None = None,
        comp_tokens: int | None = None,
        total_tokens: int | None = None,
        latency_ms: float | None = None,
        cost_usd: float | None = None,
        status: Status | None = None,
        error: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
    ) -> None:
        """Set fields of this step's span (those given; later calls win). Same meaning as ``Trace.record``."""
        if model is not None:
            self._model = check_model(model)
        if provider is not None:
            self._provider = check_text(provider, "provider")
        if prompt_tokens is not None:
            self._prompt = check_tokens(prompt_tokens, "prompt_tokens")
        if comp_tokens is not None:
            self._comp = check_tokens(comp_tokens, "comp_tokens")
        if total_tokens is not None:
            self._total = check_tokens(total_tokens, "total_tokens")
        if latency_ms is not None:
            self._latency = check_number(latency_ms, "latency_ms")
        if cost_usd is not None:
            self._cost = check_number(cost_usd, "cost_usd")
        if status is not None:
            self._status = check_status(status)
        if error is not None:
            self._error = check_text(error, "error")
        if attributes:
            self._attributes.update(check_attributes(attributes))
        if cache_read_tokens is not None:
            self._cache_read = check_tokens(cache_read_tokens, "cache_read_tokens") or 0
        if cache_write_tokens is not None:
            self._cache_write = check_tokens(cache_write_tokens, "cache_write_tokens") or 0

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute on this step's span."""
        self._attributes.update(check_attributes({key: value}))

    def record_error(self, exc: BaseException | str) -> None:
        """Mark this step failed (``timeout`` for a ``TimeoutError``)."""
        if isinstance(exc, str):
            self._status, self._error = "error", exc
        else:
            self._status, self._error = error_status(exc)
            self.trace._recorded_exc = exc

    def end(self, exc: BaseException | None = None) -> Span | None:
        """Finish the step (``exc``: what the block raised) and hand its span to the trace.

        Raises ``BudgetExceeded`` (recording nothing) when the trace has a budget, the step reserved no
        estimate, the block did not raise and the cost does not fit.
        """
        if self.done:
            return self.span
        elapsed_ms = (time.perf_counter() - self._t0) * 1000.0 if self._started else None
        end_ms = now_ms()
        self.done = True
        self._leave()
        if exc is not None:
            self.record_error(exc)
        try:
            span = self._build(elapsed_ms, end_ms)
        except BaseException:
            if self._reservation is not None:
                self._reservation.release()
            raise
        self._settle(span, exc)
        if span is not None:
            self.span = span
            self.trace.add(span)
        return span

    def _leave(self) -> None:
        if self._token is None:
            return
        try:
            SCOPE.reset(self._token)
        except ValueError:  # ended in another context than it started in
            SCOPE.set(self._previous)
        self._token = None

    def _build(self, elapsed_ms: float | None, end_ms: int) -> Span | None:
        if self._model is None:
            log.debug("step %r of trace %s named no model; no span emitted", self.name, self.trace.id)
            return None
        prompt, comp, total = self._prompt, self._comp, self._total
        if prompt is None and comp is None and total is None:
            if self._status == "ok":
                log.debug("step %r of trace %s recorded no tokens; no span emitted", self.name, self.trace.id)
                return None
            prompt = 0  # a failed call that consumed nothing
        cost = self._cost
        if cost is None and (prompt is not None or comp is not None):
            cost = self.trace.tracer.price(
                self._model, self._provider, prompt, comp, self._cache_read, self._cache_write
            )
        latency = self._latency
        if latency is None and elapsed_ms is not None:
            latency = round(elapsed_ms, 3)
        if self._started:
            started, ended = stamp(self._start_ms), stamp(max(end_ms, self._start_ms))
        elif latency is not None:
            started, ended = stamp(end_ms - round(latency)), stamp(end_ms)
        else:
            started, ended = stamp(end_ms), None
        base = self.trace.attributes
        attrs = {**base, **self._attributes} if base else self._attributes
        _cache_attributes(attrs, self._cache_read, self._cache_write)
        return make_span(
            self.trace.id,
            self.span_id,
            self.parent_span_id,
            self.name,
            self._model,
            self._provider,
            prompt,
            comp,
            total,
            cost,
            latency,
            self._status,
            self._error,
            self.trace.caller,
            started,
            ended,
            attrs,
        )

    def _settle(self, span: Span | None, exc: BaseException | None) -> None:
        cost = None if span is None else span.cost_usd
        if self._reservation is not None:
            if span is None and exc is not None:
                self._reservation.release()
            else:
                self._reservation.settle(cost)
            return
        budget = self.trace.budget
        if budget is None or cost is None:
            return
        try:
            budget.charge(cost)
        except BudgetExceeded:
            if exc is None:
                raise
            # The block already failed: record the call anyway rather than mask its exception.
            budget.reserve(0).settle(cost)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(exc)

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(exc)

    def __repr__(self) -> str:
        return f"SpanScope(name={self.name!r}, span_id={self.span_id!r}, trace_id={self.trace.id!r})"
