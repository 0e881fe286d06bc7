"""Wire shapes: Alertmanager labels and times; dispatcher bookkeeping when the queue is full or at shutdown."""

from __future__ import annotations

import asyncio
from typing import Literal

from tokentrace.alerting import Dispatcher
from tokentrace.alerting.payload import alertmanager_alert, alertmanager_labels, keep_alive_s
from tokentrace.core.alerts import AlertRule, Delivery, Notification, StdoutDelivery
from tokentrace.core.timefmt import parse_rfc3339_ms

T0 = 1_773_584_581_000
RULE = AlertRule("cost", "total_cost", ">", 5, filter={"model": "gpt-4o", "eval.score": "x"}, level="critical")


def note(
    status: Literal["firing", "resolved"] = "firing",
    at_ms: int = T0 + 60_000,
    value: float | None = 7.5,
    rule: AlertRule = RULE,
) -> Notification:
    return Notification(rule=rule, status=status, value=value, fired_at_ms=T0, at_ms=at_ms, cooldown_s=600)


def test_labels_are_valid_prometheus_names_and_never_override_identity() -> None:
    assert alertmanager_labels(note()) == {
        "alertname": "cost",
        "severity": "critical",
        "eval_score": "x",
        "model": "gpt-4o",
    }
    for key, label in [("1st", "filter_1st"), ("severity", "filter_severity"), ("__x", "filter___x")]:
        rule = AlertRule("c", "total_cost", ">", 5, filter={key: "v"})
        assert alertmanager_labels(note(rule=rule)) == {"alertname": "c", "severity": "warning", label: "v"}


def test_firing_lives_past_the_next_renotification_and_resolution_ends_now() -> None:
    firing = alertmanager_alert(note(), "http://tt:9090/alerts")
    assert parse_rfc3339_ms(firing["startsAt"]) == T0
    assert parse_rfc3339_ms(firing["endsAt"]) == T0 + 60_000 + 1_200_000
    assert keep_alive_s(60) == 360 and keep_alive_s(600) == 1200
    resolved = alertmanager_alert(note("resolved", T0 + 120_000, None), "http://tt:9090/alerts")
    assert parse_rfc3339_ms(resolved["endsAt"]) == T0 + 120_000
    assert resolved["annotations"]["value"] == "no data"
    assert all(isinstance(v, str) for v in resolved["annotations"].values())


class GateSink:
    """A sink that holds every send until the gate opens."""

    max_retries = 0

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sent: list[str] = []

    def __call__(self, delivery: Delivery) -> GateSink:
        return self

    async def send(self, n: Notification) -> None:
        await self.gate.wait()
        self.sent.append(n.status)


async def test_full_queue_drops_and_counts() -> None:
    sink = GateSink()
    dispatcher = Dispatcher(sink, max_pending=2)
    assert dispatcher.submit(note(), StdoutDelivery())
    assert dispatcher.submit(note("resolved"), StdoutDelivery())
    assert not dispatcher.submit(note(), StdoutDelivery())
    assert dispatcher.pending == 2 and dispatcher.stats("cost").dropped == 1
    sink.gate.set()
    await dispatcher.drain()
    assert sink.sent == ["firing", "resolved"] and dispatcher.pending == 0
    assert dispatcher.stats("cost").delivered == 2


async def test_shutdown_abandons_stuck_deliveries_and_counts_them() -> None:
    sink = GateSink()
    dispatcher = Dispatcher(sink)
    for _ in range(3):
        dispatcher.submit(note(), StdoutDelivery())
    await dispatcher.aclose(timeout_s=0.1)
    stats = dispatcher.stats("cost")
    assert (stats.delivered, stats.failed) == (0, 3) and dispatcher.pending == 0
