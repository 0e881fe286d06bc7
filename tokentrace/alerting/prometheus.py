"""``tokentrace_alert_firings_total{alert, level}`` for the Prometheus exporter, read from the service."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from tokentrace.alerting.service import AlertService

__all__ = ["AlertFiringsCollector"]


class AlertFiringsCollector(Collector):
    """A collector over :meth:`AlertService.firings_total`; register it on the exporter's registry."""

    def __init__(self, service: AlertService) -> None:
        self._service = service

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tokentrace_alert_firings",
            "Times an alert rule started firing, silenced or not.",
            labels=["alert", "level"],
        )
        for (alert, level), count in sorted(self._service.firings_total().items()):
            family.add_metric([alert, level], count)
        yield family
