"""The state machine through evaluation rounds driven by a manual clock and a settable reader."""

from __future__ import annotations

import pytest

from tokentrace.core.alerts import AlertRule, Evaluation, RuleState, evaluate
from tokentrace.core.alerts.ops import compare

from .fakes import FakeReader, ManualClock

COST = AlertRule("cost-spike", "total_cost", "gt", 5.0, window="1h", cooldown="10m")


class Harness:
    """Runs rounds like the service does: states and silences carried from one round to the next."""

    def __init__(self, *rules: AlertRule) -> None:
        self.rules = list(rules) or [COST]
        self.reader = FakeReader()
        self.clock = ManualClock()
        self.states: dict[str, RuleState] = {}
        self.silences: dict[str, int] = {}

    def round(self, after_s: float = 0.0) -> Evaluation:
        self.clock.advance(after_s)
        result = evaluate(self.rules, self.states, self.silences, self.reader, self.clock(), 300.0)
        self.states = result.states
        return result

    def kinds(self, result: Evaluation) -> list[tuple[str, str]]:
        return [(n.rule.name, n.status) for n in result.notifications]

    def state(self, name: str = "cost-spike") -> RuleState:
        return self.states[name]


def test_fire_notifies_once_with_payload_fields() -> None:
    h = Harness()
    h.reader.set("total_cost", 4.0)
    first = h.round()
    assert first.notifications == [] and h.state().status == "ok" and h.state().value == 4.0
    h.reader.set("total_cost", 5.12)
    fired = h.round(30)
    assert h.kinds(fired) == [("cost-spike", "firing")]
    note = fired.notifications[0]
    assert (note.value, note.fired_at_ms, note.at_ms, note.cooldown_s) == (5.12, h.clock(), h.clock(), 600.0)
    assert fired.started == [COST]
    assert h.state().status == "firing" and h.state().last_fired_ms == h.clock()


def test_cooldown_then_renotify_keeps_episode_start() -> None:
    h = Harness()
    h.reader.set("total_cost", 9.0)
    start = h.clock()
    h.round()
    for _ in range(19):  # 9.5 minutes of 30s rounds: inside the 10m cooldown
        assert h.round(30).notifications == []
    again = h.round(30)  # exactly 10 minutes after the first notification
    assert h.kinds(again) == [("cost-spike", "firing")]
    assert again.notifications[0].fired_at_ms == start
    assert again.started == []
    assert h.round(30).notifications == []


def test_resolve_after_firing_and_back_to_ok_never_notifies_twice() -> None:
    h = Harness()
    h.reader.set("total_cost", 9.0)
    start = h.clock()
    h.round()
    h.reader.set("total_cost", 1.0)
    resolved = h.round(60)
    assert h.kinds(resolved) == [("cost-spike", "resolved")]
    assert resolved.notifications[0].fired_at_ms == start and resolved.notifications[0].at_ms == h.clock()
    assert h.state().status == "resolved" and h.state().firing_since_ms is None
    assert h.round(60).notifications == []
    h.reader.set("total_cost", 9.0)
    refired = h.round(1)  # a new episode notifies at once, cooldown only spaces repeats
    assert h.kinds(refired) == [("cost-spike", "firing")] and refired.started == [COST]


def test_default_cooldown_applies_when_rule_sets_none() -> None:
    rule = AlertRule("p99", "latency_p99_ms", ">", 5000)
    h = Harness(rule)
    h.reader.set("latency_p99", 7000)
    assert len(h.round().notifications) == 1
    assert h.round(299).notifications == []
    assert len(h.round(1).notifications) == 1


def test_min_spans_blocks_firing_on_too_little_data() -> None:
    rule = AlertRule("slow", "latency_p95", "gt", 1000, min_spans=10)
    h = Harness(rule)
    h.reader.set("latency_p95", 5000, span_count=9)
    assert h.round().notifications == [] and h.state("slow").status == "ok"
    assert h.state("slow").span_count == 9 and h.state("slow").value == 5000
    h.reader.set("latency_p95", 5000, span_count=10)
    assert h.kinds(h.round(10)) == [("slow", "firing")]
    h.reader.set("latency_p95", 5000, span_count=3)  # data thinned out: the condition no longer holds
    assert h.kinds(h.round(10)) == [("slow", "resolved")]


def test_no_data_never_fires_even_for_lt_rules() -> None:
    rule = AlertRule("quality-drop", "quality_avg", "lt", 0.75)
    h = Harness(rule)
    h.reader.set("quality_avg", None, span_count=0)
    assert h.round().notifications == [] and h.state("quality-drop").value is None
    h.reader.set("quality_avg", float("nan"), span_count=50)
    assert h.round(1).notifications == [] and h.state("quality-drop").value is None


def test_count_rule_fires_on_zero_traffic_with_default_min_spans() -> None:
    rule = AlertRule("no-traffic", "span_count", "lt", 1, window="10m")
    h = Harness(rule)
    h.reader.set("span_count", 0, span_count=0)
    assert h.kinds(h.round()) == [("no-traffic", "firing")]


def test_silenced_rule_evaluates_counts_but_does_not_notify_until_expiry() -> None:
    h = Harness()
    h.silences["cost-spike"] = h.clock() + 2 * 3600 * 1000
    h.reader.set("total_cost", 9.0)
    silent = h.round()
    assert silent.notifications == [] and silent.started == [COST]
    assert h.state().status == "firing" and h.state().announced is False
    assert h.round(3600).notifications == []
    after = h.round(3600)  # the silence ends exactly now: still firing, so it is announced
    assert h.kinds(after) == [("cost-spike", "firing")]
    assert after.notifications[0].fired_at_ms == h.clock() - 2 * 3600 * 1000


def test_resolution_during_silence_is_sent_when_silence_ends() -> None:
    h = Harness()
    h.reader.set("total_cost", 9.0)
    assert h.kinds(h.round()) == [("cost-spike", "firing")]
    h.silences["cost-spike"] = h.clock() + 60_000
    h.reader.set("total_cost", 1.0)
    assert h.round(10).notifications == [] and h.state().status == "resolved"
    assert h.round(10).notifications == []
    late = h.round(40)
    assert h.kinds(late) == [("cost-spike", "resolved")]
    assert h.round(10).notifications == []


def test_resolution_of_unannounced_episode_is_not_sent() -> None:
    h = Harness()
    h.silences["cost-spike"] = h.clock() + 60_000
    h.reader.set("total_cost", 9.0)
    h.round()
    h.reader.set("total_cost", 1.0)
    h.round(10)
    assert h.round(60).notifications == [] and h.state().status == "resolved"


def test_reader_error_keeps_state_and_other_rules_run() -> None:
    other = AlertRule("errors", "error_count", "gte", 1)
    h = Harness(COST, other)
    h.reader.set("total_cost", 9.0)
    h.reader.set("error_count", 3)
    assert len(h.round().notifications) == 2
    h.reader.failing["total_cost"] = RuntimeError("aggregate store unavailable")
    result = h.round(1)
    assert result.notifications == []
    assert h.state().status == "firing" and h.state().error == "RuntimeError: aggregate store unavailable"
    assert h.state("errors").status == "firing" and h.state("errors").error is None


def test_rules_sharing_metric_window_filter_share_one_read() -> None:
    rules = [
        AlertRule("a", "total_cost", "gt", 1, filter={"model": "gpt-4o", "tier": "gold"}),
        AlertRule("b", "total_cost_usd", "gt", 2, filter={"tier": "gold", "model": "gpt-4o"}),
        AlertRule("c", "total_cost", "gt", 3, filter={"model": "gpt-4o-mini"}),
        AlertRule("d", "total_cost", "gt", 4, window="30m", filter={"model": "gpt-4o"}),
    ]
    h = Harness(*rules)
    h.round()
    reads = [(metric, window, tuple(sorted(flt.items()))) for metric, window, flt, _ in h.reader.calls]
    assert reads == [
        ("total_cost", 3600.0, (("model", "gpt-4o"), ("tier", "gold"))),
        ("total_cost", 3600.0, (("model", "gpt-4o-mini"),)),
        ("total_cost", 1800.0, (("model", "gpt-4o"),)),
    ]
    assert {now for *_, now in h.reader.calls} == {h.clock()}


def test_deleted_rule_state_is_dropped() -> None:
    h = Harness()
    h.reader.set("total_cost", 9.0)
    h.round()
    h.rules = []
    h.round(1)
    assert h.states == {}


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("gt", 5.0, False),
        ("gt", 5.01, True),
        ("gte", 5.0, True),
        ("lt", 5.0, False),
        ("lt", 4.99, True),
        ("lte", 5.0, True),
        ("eq", 5.0 + 1e-12, True),
        ("eq", 5.01, False),
    ],
)
def test_comparisons_at_the_threshold(op: str, value: float, expected: bool) -> None:
    rule = AlertRule("x", "total_cost", op, 5.0)
    assert compare(rule.comparison, value, 5.0) is expected
