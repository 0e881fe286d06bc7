"""How long a real server's event loop is held: ``/health`` pinged every 5 ms over one keep-alive connection.

``/health`` does nothing slow, so its round trip is the time the loop took to get to it: the longest round
trip while a heavy request runs is (an upper bound of) the longest stretch the loop was held by that request
(plus scheduling noise on a loaded machine, which is why tests bound it generously).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["LoopProbe", "longest_hold"]

#: Pause between two pings.
PING_INTERVAL_S = 0.005


class LoopProbe:
    """``with LoopProbe(port) as probe: ...``; then ``probe.longest`` (seconds) and ``probe.pings``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.longest = 0.0
        self.pings = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.connect()  # the connection set-up is not the loop's hold: not timed
            while not self._stop.is_set():
                started = time.perf_counter()
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                took = time.perf_counter() - started
                if response.status != 200:
                    self.failures.append(f"/health answered {response.status}")
                self.longest = max(self.longest, took)
                self.pings += 1
                time.sleep(PING_INTERVAL_S)
        except OSError as exc:
            self.failures.append(f"/health failed: {exc!r}")
        finally:
            connection.close()

    def __enter__(self) -> LoopProbe:
        self._thread.start()
        time.sleep(0.05)  # a few pings before the heavy request
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        time.sleep(0.02)
        self._stop.set()
        self._thread.join(60)


def longest_hold(port: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``work`` (the heavy request, in this thread) under a probe: (the longest /health round trip, its result)."""
    with LoopProbe(port) as probe:
        result = work()
    assert not probe.failures, probe.failures
    assert probe.pings > 0, "no /health round trip completed"
    return probe.longest, result


def least_hold(
    port: int, work: Callable[[], Any], *, under: float, trials: int = 3, setup: Callable[[], None] | None = None
) -> tuple[float, list[Any]]:
    """``longest_hold`` of ``work`` (after ``setup``, not probed) up to ``trials`` times, until one is ``under``:
    (the least of them, every result). A hold the request itself causes shows in every trial; the scheduling
    noise of a busy machine does not, so a guard on the least fails for the first and not for the second."""
    least, results = float("inf"), []
    for _ in range(trials):
        if setup is not None:
            setup()
        held, result = longest_hold(port, work)
        least = min(least, held)
        results.append(result)
        if least < under:
            break
    return least, results
