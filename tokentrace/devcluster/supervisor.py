"""Start servers in order, watch them, and stop every one of them on Ctrl-C, SIGTERM or a crash.

Servers are started in tiers (Kafka and Redis, then the workers, then the API replicas, then demo
traffic) and stopped in reverse: each tier gets SIGTERM (to its process groups), then SIGKILL for what is
still up after ``grace`` seconds, so workers leave their consumer group while Kafka still runs. SIGINT and
SIGTERM both interrupt whatever the main thread is doing, start-up included; a second signal while
stopping skips the grace period. Children also die with the supervisor if it is SIGKILLed
(``PR_SET_PDEATHSIG``, see ``procs``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Protocol, Self

__all__ = ["Stopped", "Supervisor"]


class Stopped(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stoppable(Protocol):
    """What the supervisor runs: a ServerProcess, a KafkaCluster or a RedisServer."""

    def terminate(self) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def check_alive(self) -> None: ...


@dataclass
class _Tier:
    name: str
    members: list[Stoppable] = field(default_factory=list)


class Supervisor:
    """Owns every server the dev cluster started; a context manager that installs the signal handlers."""

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self.tiers: list[_Tier] = []
        self._hurry = threading.Event()
        self._stopping = False
        self._previous: dict[int, object] = {}

    def tier(self, name: str) -> None:
        """Begin a new tier: what is added next is stopped before everything added so far."""
        self.tiers.append(_Tier(name))

    def add(self, member: Stoppable) -> None:
        """Own a started (or starting) server."""
        if not self.tiers:
            self.tier("servers")
        self.tiers[-1].members.append(member)

    def check_alive(self) -> None:
        """Raise the first member's error if one has exited."""
        for tier in self.tiers:
            for member in tier.members:
                member.check_alive()

    def watch(self, interval: float = 0.5, tick: Callable[[], None] | None = None) -> None:
        """Block until a signal (raises Stopped) or until a server exits (raises its DevClusterError)."""
        while True:
            self.check_alive()
            if tick:
                tick()
            time.sleep(interval)

    def stop_all(self) -> None:
        """Stop every tier, newest first: SIGTERM, then SIGKILL after ``grace`` s (at once after a second signal)."""
        self._stopping = True
        for tier in reversed(self.tiers):
            for member in tier.members:
                member.terminate()
            deadline = time.monotonic() + self.grace
            for member in tier.members:
                left = 0.0 if self._hurry.is_set() else max(0.0, deadline - time.monotonic())
                member.stop(left)
        self.tiers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            self._hurry.set()
            return
        raise Stopped(signum)

    def __enter__(self) -> Self:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        """Stop everything; a Stopped (a signal) is swallowed here, once everything is down."""
        try:
            self.stop_all()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
        return isinstance(exc, Stopped)
