"""The tracer: starts traces and hands their finished spans to one transport (and, in-process mode, to
the aggregator of :mod:`tokentrace.producers.inprocess`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self

from tokentrace.core.pricing import PriceTable, Rates, default_table
from tokentrace.core.span import AttributeValue, Span

from .budget import Budget
from .build import check_attributes, check_text
from .ids import new_id
from .trace import Trace
from .transports.base import Transport
from .transports.stdout import StdoutTransport

if TYPE_CHECKING:
    from tokentrace.config import HTTPServerConfig
    from tokentrace.core.alerts import AlertRule

    from .inprocess import InProcess

__all__ = ["Tracer", "TracerConfig"]

log = logging.getLogger(__name__)


@dataclass
class TracerConfig:
    """Tracer settings. ``transport`` defaults to ``StdoutTransport()``, ``prices`` to the library table.

    ``caller`` names the service on every span; ``attributes`` are added to every span;
    ``max_buffered_spans`` bounds how many spans a trace holds before ``end`` (then they are sent early).

    In-process mode (``alerts`` or ``http_server`` set): every span the tracer sends is also counted by an
    aggregator inside this process; ``alerts`` are evaluated every ``alert_interval`` (a Go duration or
    seconds) and ``http_server`` serves the HTTP API of ``tokentrace serve`` from a background thread.
    Memory-only unless ``data_dir`` is given (then durable as ``tokentrace serve --data-dir``).
    ``max_indexed_spans`` is how many of the newest spans ``/traces`` can show (the server's
    ``storage.max_spans``, smaller here: every indexed trace is work for the application's garbage collector).
    """

    transport: Transport | None = None
    caller: str = ""
    prices: PriceTable | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    max_buffered_spans: int = 1000
    alerts: Sequence[AlertRule] = ()
    alert_interval: str | float = "15s"
    http_server: HTTPServerConfig | None = None
    data_dir: str | os.PathLike[str] | None = None
    max_indexed_spans: int = 10_000


class Tracer:
    """Starts traces. ``Tracer(TracerConfig(...))`` or ``Tracer(transport=..., caller=..., prices=...)``.

    Thread-safe; one tracer per process is typical. ``close()`` (or ``with Tracer(...)``) flushes and
    closes the transport, and stops the in-process aggregator, alert timer and server if any.

    In-process mode: ``Tracer(alerts=[AlertRule(...)], http_server=HTTPServerConfig(addr=":9090"))``
    (see :class:`TracerConfig`). Construction raises OSError if the address is taken; ``server_url`` is
    the address it listens on.
    """

    def __init__(
        self,
        config: TracerConfig | None = None,
        *,
        transport: Transport | None = None,
        caller: str | None = None,
        prices: PriceTable | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        max_buffered_spans: int | None = None,
        alerts: Sequence[AlertRule] | None = None,
        alert_interval: str | float | None = None,
        http_server: HTTPServerConfig | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        max_indexed_spans: int | None = None,
    ) -> None:
        config = config or TracerConfig()
        self.transport: Transport = transport or config.transport or StdoutTransport()
        self.caller: str = check_text(config.caller if caller is None else caller, "caller")
        self.prices: PriceTable = prices or config.prices or default_table()
        self.attributes = check_attributes(config.attributes if attributes is None else attributes)
        self.max_buffered_spans = config.max_buffered_spans if max_buffered_spans is None else max_buffered_spans
        if self.max_buffered_spans < 1:
            raise ValueError("max_buffered_spans must be >= 1")
        # (model, provider) -> per-token rates of linearly priced models, for ``price`` on the hot path.
        self._rates: dict[tuple[str, str], Rates] = {}
        self._inprocess: InProcess | None = None
        rules = list(config.alerts if alerts is None else alerts)
        server = http_server or config.http_server
        if rules or server is not None:
            from .inprocess import InProcess

            self._inprocess = InProcess(
                rules=rules,
                alert_interval=config.alert_interval if alert_interval is None else alert_interval,
                http_server=server,
                data_dir=data_dir or config.data_dir,
                pricer=self.prices,
                max_indexed_spans=config.max_indexed_spans if max_indexed_spans is None else max_indexed_spans,
            )

    @property
    def server_url(self) -> str | None:
        """The in-process HTTP server's base URL (``http://0.0.0.0:9090``), None without one."""
        return None if self._inprocess is None else self._inprocess.url

    def start(
        self,
        name: str,
        *,
        caller: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        budget: Budget | None = None,
        trace_id: str | None = None,
    ) -> Trace:
        """Start a trace named after the workflow; ``budget`` caps what its calls may cost."""
        if type(name) is not str:
            name = check_text(name, "name")
        if caller is not None and type(caller) is not str:
            caller = check_text(caller, "caller")
        if trace_id is not None and type(trace_id) is not str:
            trace_id = check_text(trace_id, "trace_id")
        attrs = self.attributes
        if attributes:
            attrs = {**attrs, **check_attributes(attributes)}
        return Trace(
            self,
            name,
            trace_id or new_id(),
            self.caller if caller is None else caller,
            attrs,
            budget,
        )

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the transport delivered what it was given (at most ``timeout`` seconds), and the
        in-process aggregator counted it."""
        self.transport.flush(timeout)
        if self._inprocess is not None:
            self._inprocess.flush(timeout)

    def close(self) -> None:
        """Flush and close the transport; stop the in-process aggregator, alerts and server."""
        try:
            self.transport.close()
        finally:
            if self._inprocess is not None:
                self._inprocess.close()

    def price(
        self,
        model: str,
        provider: str,
        prompt: int | None,
        comp: int | None,
        cache_read: int = 0,
        cache_write: int = 0,
    ) -> float | None:
        """A call's cost in USD from ``prices`` (``None`` for an unknown model), for counts already checked.

        Linearly priced models are priced from rates remembered per ``(model, provider)``, which skips the
        table's argument checks on the SDK's hot path; the result is the table's (``Rates.cost``). Raises
        ValueError when the cached tokens exceed the prompt.
        """
        if not (cache_read or cache_write):
            rates = self._rates.get((model, provider))
            if rates is not None:
                return rates.cost(prompt or 0, comp or 0)
        cost = self.prices.cost(model, prompt, comp, provider or None, cache_read, cache_write)
        if cost is not None and (model, provider) not in self._rates:
            rates = self.prices.linear_rates(model, provider or None)
            if rates is not None:
                self._rates[(model, provider)] = rates
        return cost

    def send(self, spans: Sequence[Span]) -> None:
        """Hand finished spans to the in-process aggregator (if any) and the transport. Never raises: a
        transport that does is logged, and the spans are lost."""
        inprocess = self._inprocess
        if inprocess is not None:
            inprocess.add(spans)
        try:
            self.transport.send(spans)
        except Exception:  # a transport must not raise; if one does, the traced code still must not fail
            log.exception("transport %r raised while sending %d spans; they are lost", self.transport, len(spans))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
