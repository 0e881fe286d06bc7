"""The tokentrace SDK: record every inference call as a span with tokens, cost and latency.

    from tokentrace.producers import Budget, FileTransport, Tracer

    tracer = Tracer(transport=FileTransport("traces.jsonl"), caller="summarizer")
    with tracer.start("summarize-document", budget=Budget(0.50)) as trace:
        with trace.span("draft", model="gpt-4o", provider="openai", estimate_usd=0.01) as step:
            resp = call_model(...)                       # timed; an exception marks the span failed
            step.record(prompt_tokens=resp.usage.prompt_tokens, comp_tokens=resp.usage.completion_tokens)
        trace.record(model="gpt-4o-mini", prompt_tokens=80, comp_tokens=12, latency_ms=210)
    # leaving the block ends the trace: its spans go to the transport

Costs come from ``tokentrace.core.pricing`` (``cost(...)``; ``None`` for an unknown model).
"""

from tokentrace.core.pricing import ModelPrices, PriceTable, cost
from tokentrace.core.span import Span, Status

from .budget import Budget, BudgetExceeded, Reservation
from .context import current_span, current_trace
from .reporter import Reporter
from .trace import SpanScope, Trace
from .tracer import Tracer, TracerConfig
from .transports import (
    BaseTransport,
    FileTransport,
    HTTPTransport,
    MultiTransport,
    NoopTransport,
    ReadResult,
    StdoutTransport,
    Transport,
    TransportStats,
    read_spans,
)

__all__ = [
    "BaseTransport",
    "Budget",
    "BudgetExceeded",
    "FileTransport",
    "HTTPTransport",
    "ModelPrices",
    "MultiTransport",
    "NoopTransport",
    "PriceTable",
    "ReadResult",
    "Reporter",
    "Reservation",
    "Span",
    "SpanScope",
    "Status",
    "StdoutTransport",
    "Trace",
    "Tracer",
    "TracerConfig",
    "Transport",
    "TransportStats",
    "cost",
    "current_span",
    "current_trace",
    "read_spans",
]
