"""Budget: reserve-then-settle, and concurrent overspend attempts that must never pass the limit."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import pytest

from tests.producers.conftest import RecordingTransport
from tokentrace.producers import Budget, BudgetExceeded, Tracer


def test_reserve_settle_release() -> None:
    budget = Budget(1.0, name="agent")
    r1 = budget.reserve(0.4)
    assert (budget.reserved_usd, budget.spent_usd, budget.remaining_usd) == (0.4, 0.0, 0.6)
    r1.settle(0.25)
    assert (budget.reserved_usd, budget.spent_usd) == (0.0, 0.25)
    r2 = budget.reserve(0.5)
    r2.release()
    r2.release()  # idempotent
    assert budget.remaining_usd == 0.75
    with pytest.raises(RuntimeError):
        r1.settle(0.1)  # already settled


def test_exceeding_raises_before_taking_anything() -> None:
    budget = Budget(0.10, name="loop")
    budget.charge(0.07)
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(0.05)
    assert budget.reserved_usd == 0 and budget.spent_usd == 0.07
    err = info.value
    assert (err.limit_usd, err.spent_usd, err.requested_usd) == (0.10, 0.07, 0.05)
    assert "budget 'loop'" in str(err) and "0.05" in str(err)
    with pytest.raises(BudgetExceeded):
        budget.charge(0.04)
    budget.charge(0.03)  # exactly the limit is allowed
    assert budget.exhausted and budget.remaining_usd == 0


def test_reservation_context_manager() -> None:
    budget = Budget(1.0)
    with budget.reserve(0.3):
        pass  # not settled: counts the estimate
    assert budget.spent_usd == 0.3
    with pytest.raises(KeyError), budget.reserve(0.3):
        raise KeyError("call failed")
    assert budget.spent_usd == 0.3 and budget.reserved_usd == 0  # released


def test_settling_above_the_estimate_records_the_truth() -> None:
    budget = Budget(0.10)
    budget.reserve(0.05).settle(0.12)
    assert budget.spent_usd == 0.12 and budget.exhausted
    with pytest.raises(BudgetExceeded):
        budget.reserve(0.0001)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True])
def test_invalid_amounts(bad: float) -> None:
    with pytest.raises(ValueError):
        Budget(bad)
    with pytest.raises(ValueError):
        Budget(1.0).reserve(bad)


def test_sums_do_not_drift() -> None:
    budget = Budget(1.0)
    for _ in range(10):
        budget.charge(0.1)  # 0.1 * 10 in floats is 0.9999999999999999
    assert budget.spent_usd == 1.0 and budget.exhausted


def test_concurrent_threads_never_overspend() -> None:
    limit = 1.0
    budget = Budget(limit)
    barrier = threading.Barrier(16)
    granted: list[float] = []
    refused = 0
    lock = threading.Lock()

    def agent(seed: int) -> None:
        nonlocal refused
        rng = random.Random(seed)
        barrier.wait(10)
        for _ in range(200):
            estimate = rng.choice([0.001, 0.003, 0.007, 0.013])
            try:
                reservation = budget.reserve(estimate)
            except BudgetExceeded:
                with lock:
                    refused += 1
                continue
            reservation.settle(estimate * rng.uniform(0.5, 1.0))  # actual cost <= estimate
            with lock:
                granted.append(estimate)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refused > 0, "the test must actually push past the limit"
    assert budget.spent_usd <= limit
    assert budget.reserved_usd == 0


def test_concurrent_reservations_in_flight_never_pass_the_limit() -> None:
    budget = Budget(0.05)
    held: list[object] = []
    lock = threading.Lock()
    barrier = threading.Barrier(32)

    def grab() -> None:
        barrier.wait(10)
        try:
            reservation = budget.reserve(0.01)
        except BudgetExceeded:
            return
        with lock:
            held.append(reservation)

    threads = [threading.Thread(target=grab) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == 5  # exactly what fits, all held at the same time
    assert budget.reserved_usd == pytest.approx(0.05)


async def test_concurrent_asyncio_tasks_never_overspend(recording: RecordingTransport, tracer: Tracer) -> None:
    budget = Budget(0.002)  # test-model: $1/M input, $2/M output
    trace = tracer.start("agent", budget=budget)
    refused = 0

    async def call(i: int) -> None:
        nonlocal refused
        try:
            async with trace.span(f"call{i}", model="test-model", estimate_usd=0.0003) as step:
                await asyncio.sleep(0.001 * (i % 5))  # calls overlap while reservations are held
                step.record(prompt_tokens=100, comp_tokens=100)  # $0.0003
        except BudgetExceeded:
            refused += 1

    await asyncio.gather(*(call(i) for i in range(20)))
    trace.end()
    assert refused == 20 - 6  # 6 * $0.0003 = $0.0018 fits, a 7th would not
    assert budget.spent_usd <= 0.002
    assert sum(s.cost_usd or 0 for s in recording.spans) == pytest.approx(budget.spent_usd)
    assert len(recording.spans) == 6


def test_trace_record_refuses_a_call_that_does_not_fit(tracer: Tracer, recording: RecordingTransport) -> None:
    budget = Budget(0.001)
    with tracer.start("loop", budget=budget) as trace, pytest.raises(BudgetExceeded):
        for _ in range(100):
            trace.record(model="test-model", prompt_tokens=100, comp_tokens=100)  # $0.0003 each
    assert len(recording.spans) == 3
    assert budget.spent_usd == pytest.approx(0.0009)


def test_step_without_estimate_is_charged_on_exit(tracer: Tracer, recording: RecordingTransport) -> None:
    budget = Budget(0.0005)
    trace = tracer.start("t", budget=budget)
    with trace.span("a", model="test-model") as step:
        step.record(prompt_tokens=100, comp_tokens=100)
    with pytest.raises(BudgetExceeded), trace.span("b", model="test-model") as step:
        step.record(prompt_tokens=100, comp_tokens=100)
    trace.end()
    assert [s.name for s in recording.spans] == ["a"]
    assert budget.spent_usd == pytest.approx(0.0003)


def test_failed_step_releases_its_reservation(tracer: Tracer) -> None:
    budget = Budget(1.0)
    trace = tracer.start("t", budget=budget)
    with pytest.raises(ConnectionError), trace.span("call", estimate_usd=0.5):  # no model: no span
        raise ConnectionError("refused")
    assert budget.reserved_usd == 0 and budget.spent_usd == 0


def test_invalid_record_charges_nothing(tracer: Tracer) -> None:
    budget = Budget(1.0)
    trace = tracer.start("t", budget=budget)
    weird: Any = "weird"
    with pytest.raises(ValueError):
        trace.record(model="test-model", prompt_tokens=10, status=weird)
    assert budget.spent_usd == 0
