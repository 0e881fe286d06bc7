"""``with cycles_wait():`` around work in a thread that builds many short-lived containers and no cycles.

Decoding 10k OTLP spans of JSON builds a million containers, summing and rendering 10k series for a scrape
hundreds of thousands; each full pass of the cycle collector meanwhile walked all of them, again and again
(40-270 ms a pass, collecting nothing), holding the GIL and so the event loop. The collector is paused while any
such work runs, from any thread, and resumes when the last ends; one disabled by someone else stays disabled.
Works that keep overlapping (back-to-back scrapes and exports) cannot keep it paused for good: past
``MAX_PAUSE_S`` of one pause, the next work to end runs a full collection (the cyclic garbage made meanwhile).
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator

__all__ = ["MAX_PAUSE_S", "CyclesWait", "cycles_wait"]

#: The longest one pause goes without a collection.
MAX_PAUSE_S = 10.0


class CyclesWait:
    """The pause, counted across threads (``cycles_wait`` is the process's one)."""

    def __init__(self, max_pause_s: float = MAX_PAUSE_S) -> None:
        self.max_pause_s = max_pause_s
        self._lock = threading.Lock()
        self._running = 0
        self._resume = False
        self._collected_at = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._running == 0:
                self._resume = gc.isenabled()
                self._collected_at = time.monotonic()
                gc.disable()
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0 and self._resume:
                    gc.enable()
                elif self._running and self._resume and time.monotonic() - self._collected_at > self.max_pause_s:
                    self._collected_at = time.monotonic()
                    gc.collect()


cycles_wait = CyclesWait()
