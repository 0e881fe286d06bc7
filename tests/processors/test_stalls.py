"""A partition whose next needed message is on the broker but never arrives is found and fetched again.

Faust's ``Consumer.getmany`` drops records aiokafka already handed over when the consumer generation changes
or the flow stops mid-batch; a later seek to the committed offset skips partitions committed at 0 or never.
The partition then looks healthy (assigned, not paused) and nothing arrives (seen after a restart over kept
state and after a kill -9 takeover; tests/processors/test_idempotency_distributed.py and
tests/devcluster/test_command.py exercise those for real). Here the broker's answers are stubbed so each
decision of the watchdog is checked: when it acts, what it seeks to, when it leaves a partition alone.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from faust.types import TP

from tokentrace.processors import worker as worker_module
from tokentrace.processors.worker import STALL_CHECK_S, STALL_S, WorkerSettings, build_app

TOPIC = "spans"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(worker_module.time, "monotonic", clock)
    return clock


@pytest.fixture
def setup(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[int, int], list[tuple[int, int]]]:
    """A worker owning partitions 0 and 1; the broker's end offsets and the seeks made, as dicts to steer/read."""
    app = build_app(WorkerSettings(bootstrap_servers="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", topic=TOPIC))
    worker = app.tokentrace_worker  # type: ignore[attr-defined]
    ends: dict[int, int] = {}
    seeks: list[tuple[int, int]] = []

    async def highwaters(*tps: TP) -> dict[TP, int]:
        return {tp: ends[tp.partition] for tp in tps if tp.partition in ends}

    async def seek_wait(offsets: dict[TP, int]) -> None:
        seeks.extend((tp.partition, offset) for tp, offset in offsets.items())

    monkeypatch.setattr(app.consumer, "highwaters", highwaters)
    monkeypatch.setattr(app.consumer, "seek_wait", seek_wait)
    monkeypatch.setattr(worker, "owned_partitions", lambda: {0, 1})
    worker._next.update({0: 5, 1: 7})
    return worker, ends, seeks


async def _check_at(worker: Any, clock: Clock, seconds: float) -> None:
    clock.now += seconds
    await worker.tick()


async def test_a_partition_with_messages_waiting_that_never_arrive_is_resumed_and_sought_to_its_next_offset(
    setup: tuple[Any, dict[int, int], list[tuple[int, int]]], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    worker, ends, seeks = setup
    ends.update({0: 9, 1: 7})  # partition 0 has offsets 5..8 waiting; partition 1 is caught up
    worker.app.consumer.pause_partitions([TP(TOPIC, 0)])  # e.g. left out of Faust's active set
    await _check_at(worker, clock, STALL_CHECK_S)  # first sight: waiting since now
    await _check_at(worker, clock, STALL_S - STALL_CHECK_S / 2)
    assert seeks == [] and worker.stalls == 0
    with caplog.at_level(logging.ERROR):
        await _check_at(worker, clock, STALL_CHECK_S)
    assert seeks == [(0, 5)] and worker.stalls == 1
    assert TP(TOPIC, 0) not in worker.app.consumer._paused_partitions
    assert "partition 0: offsets 5..8 are on the broker but none arrived" in caplog.text
    assert "'paused': True" in caplog.text  # the fetch state it was found in
    # Still nothing: tried again one STALL_S later, not at every check.
    await _check_at(worker, clock, STALL_CHECK_S)
    assert seeks == [(0, 5)]
    await _check_at(worker, clock, STALL_S)
    assert seeks == [(0, 5), (0, 5)] and worker.stalls == 2


async def test_a_partition_making_progress_is_left_alone(
    setup: tuple[Any, dict[int, int], list[tuple[int, int]]], clock: Clock
) -> None:
    worker, ends, seeks = setup
    ends.update({0: 1000, 1: 7})
    for _ in range(10):  # a backlog worked through: the offset needed moves between checks
        await _check_at(worker, clock, STALL_CHECK_S)
        worker._next[0] += 50
    assert seeks == [] and worker.stalls == 0


async def test_holes_recovery_and_rebalances_are_not_stalls(
    setup: tuple[Any, dict[int, int], list[tuple[int, int]]], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, ends, seeks = setup
    ends.update({0: 9, 1: 9})
    worker._holes[0] = worker_module._Hole(5, clock.now)  # sought back over a hole: the hole logic owns it
    monkeypatch.setattr(worker, "_reseek_holes", _nothing)
    worker.app.rebalancing = True
    for _ in range(5):
        await _check_at(worker, clock, STALL_S)
    assert seeks == []  # nothing while the group rebalances
    worker.app.rebalancing = False
    await _check_at(worker, clock, STALL_CHECK_S)
    await _check_at(worker, clock, STALL_S)
    assert seeks == [(1, 7)]  # partition 1 stalled; partition 0 is a hole


async def test_a_broker_that_cannot_answer_is_logged_not_raised(
    setup: tuple[Any, dict[int, int], list[tuple[int, int]]], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, _, seeks = setup

    async def unreachable(*tps: TP) -> dict[TP, int]:
        raise ConnectionError("broker down")

    monkeypatch.setattr(worker.app.consumer, "highwaters", unreachable)
    await _check_at(worker, clock, STALL_CHECK_S)  # tick must not raise (it runs forever)
    assert seeks == []


async def _nothing() -> None:
    return None
