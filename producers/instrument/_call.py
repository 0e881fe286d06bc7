"""One instrumented client call: what it learned (model, usage, first output), and the span it becomes.

A ``Call`` captures the current trace and step when the call starts, so a stream finished later (or
garbage-collected in another thread) still lands in the right trace under the right parent. ``finish``
runs once; it never raises (a failure is logged), since the caller's request must not fail for it.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokentrace.core.ingest import CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE
from tokentrace.core.span import AttributeValue, Status

from ..budget import BudgetExceeded
from ..build import make_span
from ..clock import now_ms, stamp
from ..context import SCOPE, current_trace
from ..ids import new_id
from ..trace import error_status
from .attributes import (
    CLOSED_EARLY_ATTRIBUTE,
    METHOD_ATTRIBUTE,
    REASONING_ATTRIBUTE,
    REQUEST_MODEL_ATTRIBUTE,
    TTFT_ATTRIBUTE,
    USAGE_MISSING_ATTRIBUTE,
)

if TYPE_CHECKING:
    from ..trace import Trace
    from ..tracer import Tracer

__all__ = ["Call", "Target", "Usage", "classify"]

log = logging.getLogger(__name__)

_MAX_ERROR_DETAIL = 500


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them, in tokentrace's convention: ``prompt`` includes cached
    tokens (``cache_read`` + ``cache_write``); ``comp`` includes ``reasoning``. ``None``: not reported."""

    prompt: int | None = None
    comp: int | None = None
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """What the instrumentation of one client knows: where standalone spans go, the provider, and which of
    the client's exceptions are timeouts."""

    tracer: Tracer
    provider: str
    timeout_errors: tuple[type[BaseException], ...] = ()
    #: openai: ask for the usage chunk of a stream when the caller did not say (see ``instrument_openai``).
    stream_usage: bool = True


class Call:
    """One call of an instrumented method, from the request to its span."""

    __slots__ = (
        "_done",
        "_finalizer",
        "_reserved",
        "_start_ms",
        "_t0",
        "failure",
        "method",
        "model",
        "parent_span_id",
        "request_model",
        "target",
        "trace",
        "ttft_ms",
        "usage",
    )

    def __init__(self, target: Target, method: str, request_model: str | None) -> None:
        """Start the clock; the current trace and step (if any) become the span's trace and parent.

        Raises ``BudgetExceeded`` when the current trace's budget is already spent: the call is not made.
        """
        trace = current_trace()
        self.trace: Trace | None = trace
        self.parent_span_id: str | None = None
        #: Whether the enclosing step reserved an estimate (it then settles the budget for this call).
        self._reserved = False
        if trace is not None:
            scope = SCOPE.get()
            if scope is not None and scope.trace is trace and not scope.done:
                self.parent_span_id = scope.span_id
                self._reserved = scope.reserved
            budget = trace.budget
            if budget is not None and budget.exhausted:
                raise BudgetExceeded(budget.name, budget.limit_usd, budget.spent_usd, budget.reserved_usd, 0.0)
        self.target = target
        self.method = method
        self.request_model = request_model
        #: The model the response names (``None`` until a response or chunk names one).
        self.model: str | None = None
        self.usage = Usage()
        self.ttft_ms: float | None = None
        #: A failure the response itself reported (e.g. a ``response.failed`` stream event).
        self.failure: tuple[Status, str] | None = None
        self._done = False
        self._finalizer: weakref.finalize[..., object] | None = None
        self._start_ms = now_ms()
        self._t0 = time.perf_counter()

    def first_output(self) -> None:
        """Note the arrival of the first chunk carrying generated output (time to first token)."""
        if self.ttft_ms is None:
            self.ttft_ms = round((time.perf_counter() - self._t0) * 1000.0, 3)

    def watch(self, stream: object) -> None:
        """Record the call (as closed early) when ``stream`` is garbage-collected before it finished."""
        self._finalizer = weakref.finalize(stream, self.finish, None, True)

    def finish(self, exc: BaseException | None = None, closed_early: bool = False) -> None:
        """End the call (``exc``: what it raised) and send its span. Runs once; never raises."""
        if self._done:
            return
        self._done = True
        elapsed_ms = (time.perf_counter() - self._t0) * 1000.0
        end_ms = now_ms()
        try:
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            self._record(elapsed_ms, end_ms, exc, closed_early)
        except Exception:
            log.exception("tokentrace: could not record %s call; the call itself is unaffected", self.method)

    def _record(self, elapsed_ms: float, end_ms: int, exc: BaseException | None, closed_early: bool) -> None:
        status: Status = "ok"
        error: str | None = None
        if exc is not None:
            status, error = classify(exc, self.target.timeout_errors)
        elif self.failure is not None:
            status, error = self.failure
        model = self.model or self.request_model or "unknown"
        usage = self.usage
        attributes: dict[str, AttributeValue] = {METHOD_ATTRIBUTE: self.method}
        if self.request_model and self.request_model != model:
            attributes[REQUEST_MODEL_ATTRIBUTE] = self.request_model
        if self.ttft_ms is not None:
            attributes[TTFT_ATTRIBUTE] = self.ttft_ms
        if usage.reasoning:
            attributes[REASONING_ATTRIBUTE] = usage.reasoning
        if closed_early:
            attributes[CLOSED_EARLY_ATTRIBUTE] = True
        prompt, comp, total = usage.prompt, usage.comp, None
        if prompt is None and comp is None:
            if status == "ok":  # the provider reported no usage: counts unknown, so no cost either
                attributes[USAGE_MISSING_ATTRIBUTE] = True
                total = 0
            else:
                prompt = 0  # a failed call that consumed nothing (the SDK's convention for failed steps)
        trace, tracer = self.trace, self.target.tracer
        if trace is not None:
            tracer = trace.tracer
            name, caller, base = trace.name, trace.caller, trace.attributes
        else:
            name, caller, base = self.method, tracer.caller, tracer.attributes
        if base:
            attributes = {**base, **attributes}
        if usage.cache_read:
            attributes[CACHE_READ_ATTRIBUTE] = usage.cache_read
        if usage.cache_write:
            attributes[CACHE_WRITE_ATTRIBUTE] = usage.cache_write
        cost = None
        if prompt is not None or comp is not None:
            try:
                cost = tracer.price(model, self.target.provider, prompt, comp, usage.cache_read, usage.cache_write)
            except ValueError as err:  # e.g. cached tokens above the prompt: inconsistent provider data
                log.warning("tokentrace: cannot price %s call of %r: %s", self.method, model, err)
        latency = round(elapsed_ms, 3)
        span = make_span(
            new_id() if trace is None else trace.id,
            new_id(),
            self.parent_span_id,
            name,
            model,
            self.target.provider,
            prompt,
            comp,
            total,
            cost,
            latency,
            status,
            error,
            caller,
            stamp(self._start_ms),
            stamp(max(end_ms, self._start_ms)),
            attributes,
        )
        if trace is None:
            tracer.send([span])
            return
        if cost is not None:
            self._charge(trace, cost)
        trace.add(span)

    def _charge(self, trace: Trace, cost: float) -> None:
        """Charge the trace's budget with money already spent (never raising: the call is done). A step that
        reserved an estimate for this call settles its reservation itself, so the cost is not counted twice."""
        budget = trace.budget
        if budget is None or self._reserved:
            return
        try:
            budget.charge(cost)
        except BudgetExceeded:
            try:
                budget.reserve(0).settle(cost)  # over the limit now: later calls are refused before they run
            except BudgetExceeded:
                log.warning("tokentrace: budget %r already overspent; $%.6g not charged", budget.name, cost)


def classify(exc: BaseException, timeout_errors: tuple[type[BaseException], ...] = ()) -> tuple[Status, str]:
    """Status and error text of a failed call: ``timeout`` for ``timeout_errors`` (and ``TimeoutError``);
    an HTTP error names its status code and the provider's message."""
    status, text = error_status(exc)
    if isinstance(exc, timeout_errors):
        status = "timeout"
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):
        detail = _provider_message(getattr(exc, "body", None)) or str(exc)
        text = f"{type(exc).__name__}: HTTP {code}: {detail[:_MAX_ERROR_DETAIL]}"
    return status, text


def _provider_message(body: object) -> str | None:
    """The ``message`` of an error body: ``{"message": ...}`` or ``{"error": {"message": ...}}``."""
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
        return _provider_message(body.get("error"))
    return None
