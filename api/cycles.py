"""``with cycles_wait():`` around work in a thread that builds many short-lived containers and no cycles.

Decoding 10k OTLP spans of JSON builds a million containers, summing and rendering 10k series for a scrape
hundreds of thousands; each full pass of the cycle collector meanwhile walked all of them, again and again
(40-270 ms a pass, collecting nothing), holding the GIL and so the event loop. The collector is paused while any
such work runs, from any thread, and resumes when the last ends; one disabled by someone else stays disabled.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["CyclesWait", "cycles_wait"]


class CyclesWait:
    """The pause, counted across threads (``cycles_wait`` is the process's one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._resume = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._running == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0 and self._resume:
                    gc.enable()


cycles_wait = CyclesWait()
