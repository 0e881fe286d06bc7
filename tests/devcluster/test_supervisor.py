"""The supervisor against real child processes: stop order, SIGKILL after the grace period, crashes, signals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.devcluster.procfs import descendants, living_after
from tokentrace.devcluster.procs import DevClusterError, ServerProcess
from tokentrace.devcluster.supervisor import Stopped, Supervisor

# A parent that ignores SIGTERM and has a child of its own (same process group) that ignores it too.
STUBBORN = "trap '' TERM; sleep 300 & echo started; wait"
# Writes its name to a shared file when SIGTERM arrives, then exits.
POLITE = "trap 'echo {name} >> {log}; exit 0' TERM; echo started; while :; do sleep 0.05; done"


def shell(name: str, script: str, tmp_path: Path) -> ServerProcess:
    return ServerProcess(name, ["sh", "-c", script], tmp_path / f"{name}.log")


def wait_started(proc: ServerProcess) -> None:
    deadline = time.monotonic() + 10
    while "started" not in proc.log_path.read_text():
        assert time.monotonic() < deadline, proc.log_tail()
        time.sleep(0.02)


def test_tiers_stop_newest_first(tmp_path: Path) -> None:
    order = tmp_path / "order"
    supervisor = Supervisor(grace=5.0)
    with supervisor:
        for tier in ("storage", "workers", "api"):
            supervisor.tier(tier)
            proc = shell(tier, POLITE.format(name=tier, log=order), tmp_path)
            supervisor.add(proc)
            proc.start()
            wait_started(proc)
    assert order.read_text().split() == ["api", "workers", "storage"]


def test_what_ignores_sigterm_is_killed_after_the_grace_period_with_its_children(tmp_path: Path) -> None:
    stubborn = shell("stubborn", STUBBORN, tmp_path)
    began = 0.0
    with Supervisor(grace=0.5) as supervisor:
        supervisor.add(stubborn)
        stubborn.start()
        wait_started(stubborn)
        assert stubborn.pid is not None
        below = descendants(stubborn.pid) | {stubborn.pid}
        assert len(below) == 2
        began = time.monotonic()
    assert 0.5 <= time.monotonic() - began < 5.0
    assert stubborn.returncode == -signal.SIGKILL
    assert living_after(below) == set()


def test_a_crashed_child_is_reported_with_its_log_and_the_rest_are_stopped(tmp_path: Path) -> None:
    survivor = shell("survivor", "echo started; exec sleep 300", tmp_path)
    crasher = shell("crasher", "echo 'something broke'; exit 3", tmp_path)
    with pytest.raises(DevClusterError, match=r"crasher exited with code 3(.|\n)*something broke"), Supervisor() as sup:
        for proc in (survivor, crasher):
            sup.add(proc)
            proc.start()
        sup.watch(interval=0.05)
    assert survivor.pid is not None and not survivor.running
    assert living_after({survivor.pid}) == set()


def test_sigterm_interrupts_the_watch_and_is_swallowed_after_cleanup(tmp_path: Path) -> None:
    child = shell("child", "echo started; exec sleep 300", tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    with Supervisor() as sup:
        sup.add(child)
        child.start()
        os.kill(os.getpid(), signal.SIGTERM)
        sup.watch(interval=0.05)
        raise AssertionError("watch() must raise Stopped on SIGTERM")  # pragma: no cover
    assert child.returncode == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_stopped_names_the_signal() -> None:
    assert str(Stopped(signal.SIGINT)) == "SIGINT"
