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

In-process mode, metrics and alerts without a server to deploy (``tokentrace.producers.inprocess``):

    tracer = Tracer(
        transport=StdoutTransport(),
        alerts=[AlertRule(name="hourly-cost-spike", metric="total_cost", op=">", threshold=5.00, window="1h",
                          delivery=StdoutDelivery())],
        http_server=HTTPServerConfig(addr=":9090"),
    )
"""

from typing import TYPE_CHECKING, Any

from tokentrace.core.alerts import AlertmanagerDelivery, AlertRule, StdoutDelivery, WebhookDelivery
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

if TYPE_CHECKING:
    from tokentrace.config import HTTPServerConfig

__all__ = [
    "AlertRule",
    "AlertmanagerDelivery",
    "BaseTransport",
    "Budget",
    "BudgetExceeded",
    "FileTransport",
    "HTTPServerConfig",
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
    "StdoutDelivery",
    "StdoutTransport",
    "Trace",
    "Tracer",
    "TracerConfig",
    "Transport",
    "TransportStats",
    "WebhookDelivery",
    "cost",
    "current_span",
    "current_trace",
    "read_spans",
]


def __getattr__(name: str) -> Any:
    """``HTTPServerConfig`` is the server's own config model (``tokentrace.config``), loaded on first use so
    importing the SDK stays light and within the core."""
    if name == "HTTPServerConfig":
        from tokentrace.config import HTTPServerConfig

        return HTTPServerConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
