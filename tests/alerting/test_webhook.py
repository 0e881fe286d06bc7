"""Webhook delivery against a real local HTTP server: retries, backoff, signatures, payload, ordering."""

from __future__ import annotations

import io
import itertools
import json
import time
from typing import Any

from tests.core.alerts.fakes import FakeReader, ManualClock
from tokentrace.alerting import AlertService, RetryPolicy
from tokentrace.alerting.signing import sign, verify

from .receiver import Receiver

FAST = RetryPolicy(base_s=0.05, factor=2.0, max_s=1.0, jitter=0.5)
PAYLOAD_FIELDS = {"alert", "fired_at", "metric", "value", "threshold", "window", "status", "level", "filter"}


def rule_body(url: str, **delivery: Any) -> bytes:
    return json.dumps(
        {
            "name": "hourly-cost-spike",
            "metric": "total_cost",
            "op": "gt",
            "threshold": 5.0,
            "window": "1h",
            "level": "critical",
            "filter": {"model": "gpt-4o"},
            "delivery": {"type": "http", "url": url, **delivery},
        }
    ).encode()


async def service_with(url: str, **delivery: Any) -> tuple[AlertService, FakeReader, ManualClock]:
    reader, clock = FakeReader(), ManualClock()
    service = AlertService(reader, clock=clock, retry=FAST)
    await service.start()
    await service.create(rule_body(url, **delivery))
    return service, reader, clock


def alert(service: AlertService) -> dict[str, Any]:
    (only,) = service.list_alerts()
    return only


async def test_retries_with_backoff_until_the_server_recovers() -> None:
    async with Receiver([503, 502, 200]) as receiver:
        service, reader, _ = await service_with(receiver.url, max_retries=3)
        reader.set("total_cost", 5.12)
        service.evaluate()
        await service.drain()
        requests = await receiver.wait_for(3)
        await service.aclose()
    assert len(requests) == 3
    assert requests[0].body == requests[1].body == requests[2].body
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert 0.025 <= gaps[0] < 2.0, gaps  # 50 ms less up to half of it as jitter
    assert 0.05 <= gaps[1] < 2.0, gaps  # then 100 ms, less jitter
    shown = alert(service)
    assert (shown["delivery_failures"], shown["delivery_failed_attempts"]) == (0, 2)
    assert "502" in shown["last_delivery_error"]
    assert service.delivery_stats("hourly-cost-spike").delivered == 1


async def test_gives_up_after_max_retries_and_shows_the_failure() -> None:
    async with Receiver([500] * 10) as receiver:
        service, reader, _ = await service_with(receiver.url, max_retries=2)
        reader.set("total_cost", 9.0)
        service.evaluate()
        await service.drain()
        await service.aclose()
    assert len(receiver.requests) == 3
    shown = alert(service)
    assert (shown["delivery_failures"], shown["delivery_failed_attempts"]) == (1, 3)
    assert "500" in shown["last_delivery_error"]
    assert shown["firing"] is True  # a failed delivery does not change the rule's state


async def test_retry_after_from_the_server_is_respected() -> None:
    async with Receiver([429, 200], retry_after=1) as receiver:
        service, reader, _ = await service_with(receiver.url)
        reader.set("total_cost", 9.0)
        service.evaluate()
        await service.drain()
        await service.aclose()
    first, second = receiver.requests
    assert 0.95 <= second.at - first.at < 3.0  # not the 25-50 ms backoff


async def test_client_error_is_not_retried() -> None:
    async with Receiver([400, 200]) as receiver:
        service, reader, _ = await service_with(receiver.url, max_retries=3)
        reader.set("total_cost", 9.0)
        service.evaluate()
        await service.drain()
        await service.aclose()
    assert len(receiver.requests) == 1
    assert alert(service)["delivery_failures"] == 1


async def test_timeout_is_a_retryable_failure() -> None:
    async with Receiver(delays=[2.0]) as receiver:
        service, reader, _ = await service_with(receiver.url, timeout="200ms", max_retries=1)
        reader.set("total_cost", 9.0)
        service.evaluate()
        await service.drain()
        await service.aclose()
    assert len(receiver.requests) == 2
    stats = service.delivery_stats("hourly-cost-spike")
    assert (stats.delivered, stats.failed_attempts, stats.failed) == (1, 1, 0)
    assert stats.last_error is not None and "timed out" in stats.last_error


async def test_signature_is_verified_by_the_receiver_on_every_attempt() -> None:
    async with Receiver([503, 200], secret="s3cret") as receiver:
        service, reader, _ = await service_with(receiver.url, secret="s3cret")
        reader.set("total_cost", 9.0)
        service.evaluate()
        await service.drain()
        await service.aclose()
    assert [r.signature_ok for r in receiver.requests] == [True, True]
    assert receiver.requests[0].headers["X-Tokentrace-Signature"].startswith("sha256=")


async def test_wrong_secret_fails_the_receivers_check() -> None:
    async with Receiver(secret="receiver-secret") as receiver:
        service, reader, _ = await service_with(receiver.url, secret="other-secret")
        reader.set("total_cost", 9.0)
        service.evaluate()
        await service.drain()
        await service.aclose()
    assert [r.signature_ok for r in receiver.requests] == [False]


def test_verify_helper_rejects_tampering_and_replays() -> None:
    body, now = b'{"alert":"x"}', int(time.time())
    good = sign("k", now, body)
    assert verify("k", body, str(now), good, now_s=now)
    assert not verify("k", body + b" ", str(now), good, now_s=now)
    assert not verify("other", body, str(now), good, now_s=now)
    assert not verify("k", body, str(now), good, now_s=now + 301)
    assert not verify("k", body, None, good, now_s=now)


async def test_payload_fields_and_firing_then_resolved_in_order() -> None:
    async with Receiver([503, 200, 200]) as receiver:
        service, reader, clock = await service_with(receiver.url)
        reader.set("total_cost", 5.12)
        fired_at = clock()
        service.evaluate()
        reader.set("total_cost", 1.0)
        service.evaluate(clock.advance(60))  # queued behind the firing that is still being retried
        await service.drain()
        await service.aclose()
    bodies = [r.json() for r in receiver.requests]
    assert [b["status"] for b in bodies] == ["firing", "firing", "resolved"]
    firing, resolved = bodies[1], bodies[2]
    assert set(firing) == PAYLOAD_FIELDS
    assert firing == {
        "alert": "hourly-cost-spike",
        "fired_at": "2026-03-15T14:23:01.000Z",
        "metric": "total_cost",
        "value": 5.12,
        "threshold": 5.0,
        "window": "1h",
        "status": "firing",
        "level": "critical",
        "filter": {"model": "gpt-4o"},
    }
    assert fired_at == 1_773_584_581_000
    assert resolved["fired_at"] == firing["fired_at"] and resolved["value"] == 1.0
    assert receiver.requests[0].headers["Content-Type"] == "application/json"


async def test_slow_receiver_does_not_block_evaluation() -> None:
    async with Receiver(delays=[1.0]) as receiver:
        service, reader, clock = await service_with(receiver.url)
        reader.set("total_cost", 9.0)
        started = time.perf_counter()
        service.evaluate()
        reader.set("total_cost", 1.0)
        service.evaluate(clock.advance(15))
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5  # the receiver takes 1s per request
        assert alert(service)["firing"] is False
        await service.drain()
        await service.aclose()
    assert [r.json()["status"] for r in receiver.requests] == ["firing", "resolved"]


async def test_stdout_delivery_writes_one_json_line_per_notification() -> None:
    out = io.StringIO()
    reader, clock = FakeReader(), ManualClock()
    service = AlertService(reader, clock=clock, stream=out)
    await service.create(b'{"name": "errors", "metric": "error_rate", "op": ">", "threshold": 0.05}')
    reader.set("error_rate", 0.2)
    service.evaluate()
    await service.drain()
    await service.aclose()
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["alert"] == "errors" and set(json.loads(line)) == PAYLOAD_FIELDS
