"""End to end through a real Prometheus Alertmanager: real spans make a rule fire, tokentrace posts,
Alertmanager routes to a webhook; more spans resolve it and the resolution arrives too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.infra.alertmanager import Alertmanager
from tests.infra.procs import free_ports
from tokentrace.alerting import AlertService, RetryPolicy
from tokentrace.core.alerts import AlertmanagerDelivery, AlertRule
from tokentrace.core.span import Span
from tokentrace.core.timefmt import now_ms, parse_rfc3339_ms
from tokentrace.core.timeline import Timeline
from tokentrace.core.timeline_reader import TimelineReader

from .receiver import Receiver

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver_port() -> int:
    return free_ports(1)[0]


@pytest.fixture
def alertmanager(receiver_port: int) -> Iterator[Alertmanager]:
    with Alertmanager(f"http://127.0.0.1:{receiver_port}/hook") as server:
        yield server


async def am_alerts(am: Alertmanager, name: str) -> list[dict[str, Any]]:
    alerts = await asyncio.to_thread(am.alerts)
    return [a for a in alerts if a["labels"].get("alertname") == name]


async def until(check: Any, what: str, within_s: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_firing_and_resolution_reach_alertmanager_and_its_receiver(
    alertmanager: Alertmanager, receiver_port: int
) -> None:
    rule = AlertRule(
        "gpt4o-latency",
        "latency_p95",
        "gt",
        4000,
        window="30m",
        min_spans=10,
        filter={"model": "gpt-4o", "user.tier": "gold"},
        level="critical",
        delivery=AlertmanagerDelivery(url=alertmanager.url),
    )
    timeline = Timeline()

    def spans(count: int, latency_ms: float) -> None:
        for _ in range(count):
            span = Span(model="gpt-4o", prompt_tokens=100, latency_ms=latency_ms, attributes={"user.tier": "gold"})
            timeline.add(span, now_ms())

    service = AlertService(
        TimelineReader(timeline),
        rules=[rule],
        external_url="http://tokentrace.test:9090",
        retry=RetryPolicy(base_s=0.1),
    )
    try:
        async with Receiver(port=receiver_port) as receiver:
            spans(40, 5230.0)
            spans(5, 120.0)
            before = now_ms()
            service.evaluate()
            await service.drain()
            assert service.delivery_stats("gpt4o-latency").delivered == 1, service.delivery_stats("gpt4o-latency")

            (held,) = await until(lambda: am_alerts(alertmanager, "gpt4o-latency"), "the alert in /api/v2/alerts")
            assert held["labels"] == {
                "alertname": "gpt4o-latency",
                "severity": "critical",
                "model": "gpt-4o",
                "user_tier": "gold",
            }
            assert held["status"]["state"] == "active"
            assert held["generatorURL"] == "http://tokentrace.test:9090/alerts"
            assert abs(float(held["annotations"]["value"]) - 5230) <= 0.01 * 5230  # the sketch's p95
            assert held["annotations"]["metric"] == "latency_p95"
            assert abs(parse_rfc3339_ms(held["startsAt"]) - before) < 5_000
            assert parse_rfc3339_ms(held["endsAt"]) > now_ms() + 60_000  # kept alive past the cooldown

            (note,) = await receiver.wait_for(1, within_s=15)
            firing = note.json()
            assert firing["status"] == "firing" and firing["receiver"] == "test-webhook"
            assert [a["labels"]["alertname"] for a in firing["alerts"]] == ["gpt4o-latency"]
            assert firing["alerts"][0]["annotations"]["summary"].startswith("latency_p95 gt 4000 over 30m")

            spans(2000, 900.0)  # the slow 2 % fall below p95
            service.evaluate()
            await service.drain()
            requests = await receiver.wait_for(2, within_s=15)
            resolved = requests[-1].json()
            assert resolved["status"] == "resolved"
            assert resolved["alerts"][0]["status"] == "resolved"
            assert resolved["alerts"][0]["labels"]["alertname"] == "gpt4o-latency"
            assert parse_rfc3339_ms(resolved["alerts"][0]["endsAt"]) >= parse_rfc3339_ms(held["startsAt"])
            assert await am_alerts(alertmanager, "gpt4o-latency") == []
    finally:
        await service.aclose()
