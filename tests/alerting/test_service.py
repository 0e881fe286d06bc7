"""AlertService as the HTTP layer uses it: create, list, silence, delete, persistence, counter, timer."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.core.alerts.fakes import FakeReader, ManualClock
from tokentrace.alerting import AlertError, AlertService, FileRuleRepository, Snapshot
from tokentrace.core.alerts import AlertRule, StdoutDelivery

CONFIG_RULES = [
    AlertRule("hourly-cost-spike", "total_cost", "gt", 10.0, window="1h"),
    AlertRule("error-burst", "error_rate", ">", 0.05, window="5m", level="critical"),
]
SPEC_004_FIELDS = [
    "name",
    "metric",
    "op",
    "threshold",
    "window",
    "last_evaluated",
    "last_fired",
    "current_value",
    "firing",
    "silenced",
    "silenced_until",
]
LATENCY_RULE = (
    b'{"name": "model-latency-alert", "metric": "latency_p95", "op": "gt", "threshold": 4000,'
    b' "window": "30m", "cooldown": "1h", "min_spans": 10, "filter": {"model": "gpt-4o"}}'
)


class QuietSinks:
    """Stands in for real senders where delivery is not under test: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.max_retries = 0

    def __call__(self, delivery: object) -> QuietSinks:
        return self

    async def send(self, note: Any) -> None:
        self.sent.append((note.rule.name, note.status))


def make(
    data_dir: Path | None = None, clock: ManualClock | None = None, rules: list[AlertRule] = CONFIG_RULES
) -> tuple[AlertService, FakeReader, ManualClock]:
    reader, clock = FakeReader(), clock or ManualClock()
    repo = FileRuleRepository(data_dir) if data_dir is not None else None
    return AlertService(reader, rules=rules, repository=repo, clock=clock, sinks=QuietSinks()), reader, clock


def by_name(service: AlertService) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in service.list_alerts()}


async def status_of(call: Any) -> tuple[int, str]:
    with pytest.raises(AlertError) as caught:
        await call
    return caught.value.status, caught.value.message


async def test_create_returns_rule_id_and_lists_with_spec_fields() -> None:
    service, _, _ = make()
    created = await service.create(LATENCY_RULE)
    assert created["name"] == "model-latency-alert"
    assert re.fullmatch(r"alert_[0-9a-f]{8}", created["rule_id"])
    listed = service.list_alerts()
    assert [a["name"] for a in listed] == ["hourly-cost-spike", "error-burst", "model-latency-alert"]
    mine = listed[2]
    assert list(mine)[: len(SPEC_004_FIELDS)] == SPEC_004_FIELDS
    assert {k: mine[k] for k in SPEC_004_FIELDS} == {
        "name": "model-latency-alert",
        "metric": "latency_p95",
        "op": "gt",
        "threshold": 4000.0,
        "window": "30m",
        "last_evaluated": None,
        "last_fired": None,
        "current_value": None,
        "firing": False,
        "silenced": False,
        "silenced_until": None,
    }
    assert (mine["rule_id"], mine["source"], mine["cooldown"], mine["min_spans"]) == (
        created["rule_id"],
        "api",
        "1h",
        10,
    )
    assert mine["filter"] == {"model": "gpt-4o"} and mine["delivery"] == "stdout"
    assert by_name(service)["error-burst"]["source"] == "config"
    assert json.dumps(listed)  # JSON-ready as is


async def test_create_errors() -> None:
    service, _, _ = make()
    status, message = await status_of(service.create(b'{"name": "x", "metric": "cost", "op": "gt", "threshold": 1}'))
    assert status == 400 and message.startswith("metric:")
    status, message = await status_of(service.create(b'{"name": "x", "metric": "total_cost", "op": "gt"}'))
    assert status == 400 and message.startswith("threshold:")
    status, message = await status_of(service.create(b"not json"))
    assert status == 400
    await service.create(LATENCY_RULE)
    assert (await status_of(service.create(LATENCY_RULE)))[0] == 409
    dup_config = b'{"name": "error-burst", "metric": "error_count", "op": "gt", "threshold": 1}'
    assert (await status_of(service.create(dup_config)))[0] == 409


async def test_delete_api_rule_but_not_config_rule() -> None:
    service, _, _ = make()
    await service.create(LATENCY_RULE)
    await service.delete("model-latency-alert")
    assert "model-latency-alert" not in by_name(service)
    status, message = await status_of(service.delete("hourly-cost-spike"))
    assert status == 409 and "config" in message
    assert (await status_of(service.delete("model-latency-alert")))[0] == 404


async def test_silence_shows_until_and_expires() -> None:
    service, _, clock = make()
    answer = await service.silence("hourly-cost-spike", b'{"duration": "2h"}')
    assert answer == {"silenced_until": "2026-03-15T16:23:01.000Z"}
    shown = by_name(service)["hourly-cost-spike"]
    assert shown["silenced"] is True and shown["silenced_until"] == "2026-03-15T16:23:01.000Z"
    clock.advance(2 * 3600)
    shown = by_name(service)["hourly-cost-spike"]
    assert shown["silenced"] is False and shown["silenced_until"] is None


async def test_silence_errors() -> None:
    service, _, _ = make()
    assert (await status_of(service.silence("nope", b'{"duration": "2h"}')))[0] == 404
    for body in (b'{"duration": "2 hours"}', b"{}", b'{"duration": "-1h"}', b'{"duration": true}'):
        status, message = await status_of(service.silence("error-burst", body))
        assert status == 400 and message.startswith("duration:"), message


async def test_restart_keeps_api_rules_and_silences(tmp_path: Path) -> None:
    first, _, clock = make(tmp_path)
    await first.start()
    kept = await first.create(LATENCY_RULE)
    await first.create(b'{"name": "gone", "metric": "error_count", "op": "gte", "threshold": 3}')
    await first.delete("gone")
    silenced = await first.silence("hourly-cost-spike", b'{"duration": "2h"}')
    await first.silence("model-latency-alert", b'{"duration": "30m"}')
    await first.aclose()

    clock.advance(60)
    second, _, _ = make(tmp_path, clock)
    await second.start()
    shown = by_name(second)
    assert list(shown) == ["hourly-cost-spike", "error-burst", "model-latency-alert"]
    assert shown["model-latency-alert"]["rule_id"] == kept["rule_id"]
    assert shown["model-latency-alert"]["source"] == "api" and shown["model-latency-alert"]["silenced"] is True
    assert shown["hourly-cost-spike"]["silenced_until"] == silenced["silenced_until"]
    assert (await status_of(second.delete("hourly-cost-spike")))[0] == 409


async def test_config_rules_follow_the_config_on_restart(tmp_path: Path) -> None:
    first, _, clock = make(tmp_path)
    await first.create(LATENCY_RULE)
    second, _, _ = make(tmp_path, clock, rules=[CONFIG_RULES[1]])
    await second.start()
    assert list(by_name(second)) == ["error-burst", "model-latency-alert"]


async def test_config_rule_shadows_stored_api_rule_of_same_name(tmp_path: Path) -> None:
    first, _, clock = make(tmp_path, rules=[])
    await first.create(LATENCY_RULE)
    config = AlertRule("model-latency-alert", "latency_p99", "gt", 9000)
    second, _, _ = make(tmp_path, clock, rules=[config])
    await second.start()
    (only,) = second.list_alerts()
    assert (only["source"], only["metric"]) == ("config", "latency_p99")


async def test_mutation_before_start_keeps_stored_rules(tmp_path: Path) -> None:
    first, _, clock = make(tmp_path)
    await first.create(LATENCY_RULE)
    second, _, _ = make(tmp_path, clock)
    await second.create(b'{"name": "second", "metric": "error_count", "op": "gte", "threshold": 3}')
    third, _, _ = make(tmp_path, clock)
    await third.start()
    assert {"model-latency-alert", "second"} <= set(by_name(third))


async def test_file_is_private_and_written_atomically(tmp_path: Path) -> None:
    service, _, _ = make(tmp_path)
    await service.create(
        b'{"name": "hook", "metric": "error_count", "op": "gte", "threshold": 3,'
        b' "delivery": {"type": "http", "url": "https://hooks.example.com/a", "secret": "s3cret"}}'
    )
    path = tmp_path / FileRuleRepository.FILENAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == [FileRuleRepository.FILENAME]  # no temp file left behind
    stored = json.loads(path.read_text())
    assert stored["rules"][0]["rule"]["delivery"]["secret"] == "s3cret"
    assert "secret" not in json.dumps(service.list_alerts())


async def test_unreadable_store_is_an_error_not_an_empty_rule_set(tmp_path: Path) -> None:
    (tmp_path / FileRuleRepository.FILENAME).write_text('{"version": 1, "rules": [{"rule_id": 3}]}')
    service, _, _ = make(tmp_path)
    with pytest.raises(ValueError, match=r"alerts\.json"):
        await service.start()


async def test_failed_save_leaves_rules_unchanged() -> None:
    class BrokenRepository:
        async def load(self) -> Snapshot:
            return Snapshot()

        async def save(self, snapshot: Snapshot) -> None:
            raise OSError("disk full")

    service = AlertService(FakeReader(), rules=CONFIG_RULES, repository=BrokenRepository(), clock=ManualClock())
    status, message = await status_of(service.create(LATENCY_RULE))
    assert status == 500 and "disk full" in message
    assert (await status_of(service.silence("error-burst", b'{"duration": "1h"}')))[0] == 500
    assert list(by_name(service)) == ["hourly-cost-spike", "error-burst"]
    assert by_name(service)["error-burst"]["silenced"] is False


async def test_firing_counter_counts_episodes_silenced_or_not() -> None:
    reader, clock, sinks = FakeReader(), ManualClock(), QuietSinks()
    service = AlertService(reader, rules=CONFIG_RULES, clock=clock, sinks=sinks, default_cooldown_s=60)
    reader.set("total_cost", 11.0)
    reader.set("error_rate", 0.01)
    for _ in range(5):  # firing for 4 minutes: repeats are not new firings
        service.evaluate(clock.advance(60))
    assert service.firing_counts() == {("hourly-cost-spike", "warning"): 1}
    reader.set("total_cost", 1.0)
    service.evaluate(clock.advance(60))
    await service.silence("hourly-cost-spike", b'{"duration": "1h"}')
    reader.set("total_cost", 11.0)
    reader.set("error_rate", 0.5)
    service.evaluate(clock.advance(60))
    assert service.firing_counts() == {("hourly-cost-spike", "warning"): 2, ("error-burst", "critical"): 1}
    await service.drain()
    assert sinks.sent == [
        ("hourly-cost-spike", "firing"),
        *[("hourly-cost-spike", "firing")] * 4,
        ("hourly-cost-spike", "resolved"),
        ("error-burst", "firing"),
    ]


async def test_run_evaluates_on_a_timer_off_the_request_path() -> None:
    reader = FakeReader()
    reader.set("total_cost", 11.0)
    sinks = QuietSinks()
    service = AlertService(reader, rules=CONFIG_RULES[:1], sinks=sinks)
    loop = asyncio.get_running_loop()
    began = loop.time()
    task = asyncio.create_task(service.run(0.05))
    await asyncio.sleep(0.32)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rounds, elapsed = len(reader.calls), loop.time() - began
    assert 4 <= rounds <= elapsed / 0.05 + 1, (rounds, elapsed)
    assert service.last_round_s is not None and service.last_round_s < 0.05
    assert by_name(service)["hourly-cost-spike"]["firing"] is True
    await service.drain()
    assert sinks.sent == [("hourly-cost-spike", "firing")]


async def test_duplicate_config_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="twice"):
        AlertService(FakeReader(), rules=[CONFIG_RULES[0], CONFIG_RULES[0]])


async def test_default_delivery_is_used_for_rules_without_one() -> None:
    service = AlertService(FakeReader(), rules=CONFIG_RULES, default_delivery=StdoutDelivery())
    assert {a["delivery"] for a in service.list_alerts()} == {"stdout"}


class SlowReader(FakeReader):
    """Every read takes ``delay_s`` of blocking work, like a reader over large aggregates."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def read(self, metric: str, window_s: float, filter: Any, now_ms: int) -> Any:
        time.sleep(self.delay_s)
        return super().read(metric, window_s, filter, now_ms)


def distinct_rules(count: int) -> list[AlertRule]:
    return [AlertRule(f"r{i}", "total_cost", "gt", 1, filter={"caller": f"c{i}"}) for i in range(count)]


async def test_async_round_yields_to_the_loop_between_slow_reads() -> None:
    reader = SlowReader(0.005)
    service = AlertService(reader, rules=distinct_rules(20), sinks=QuietSinks())
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks.clear()
    service.evaluate()  # the whole round in one go: nothing else runs meanwhile
    assert ticks == []
    await service.evaluate_async(slice_s=0.01)
    task.cancel()
    assert len(ticks) >= 5  # the ticker ran between slices of ~2 reads
    assert len(reader.calls) == 40


async def test_rule_deleted_during_an_async_round_keeps_no_state_and_sends_nothing() -> None:
    reader, sinks = SlowReader(0.005), QuietSinks()
    reader.set("total_cost", 9.0)
    service = AlertService(reader, sinks=sinks)
    for i in range(10):
        await service.create(f'{{"name": "r{i}", "metric": "total_cost", "op": "gt", "threshold": 1}}'.encode())
    evaluating = asyncio.create_task(service.evaluate_async(slice_s=0.001))
    await asyncio.sleep(0)
    await service.delete("r9")
    await evaluating
    await service.drain()
    assert "r9" not in {name for name, _ in sinks.sent} and len(sinks.sent) == 9
    assert service.firing_counts().get(("r9", "warning")) is None
    assert [a["name"] for a in service.list_alerts()] == [f"r{i}" for i in range(9)]


async def test_deleting_an_announced_firing_rule_sends_its_resolution() -> None:
    reader, clock, sinks = FakeReader(), ManualClock(), QuietSinks()
    service = AlertService(reader, clock=clock, sinks=sinks)
    await service.create(LATENCY_RULE)
    await service.create(b'{"name": "quiet", "metric": "error_count", "op": "gt", "threshold": 100}')
    reader.set("latency_p95", 9000.0, span_count=50)
    reader.set("error_count", 1.0)
    service.evaluate()
    await service.delete("model-latency-alert")
    await service.delete("quiet")  # never fired: nothing to close
    await service.drain()
    assert sinks.sent == [("model-latency-alert", "firing"), ("model-latency-alert", "resolved")]
