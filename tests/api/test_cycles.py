"""The cycle collector waits while big bodies are decoded or scrapes summed, and only then (``api.cycles``)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from tokentrace.api.cycles import CyclesWait


@pytest.fixture
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_overlapping_decodes_pause_collection_until_the_last_ends(collector_enabled: None) -> None:
    wait = CyclesWait()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with wait():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with wait():
        second_in.set()
        first_out.wait(10)
        seen.append(gc.isenabled())  # the first has ended, this one has not
    thread.join(10)
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled(collector_enabled: None) -> None:
    wait = CyclesWait()
    gc.disable()
    with wait():
        assert not gc.isenabled()
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(RuntimeError), wait():
        assert not gc.isenabled()
        raise RuntimeError("a decode that fails")
    assert gc.isenabled()


def test_works_that_keep_overlapping_still_collect(collector_enabled: None) -> None:
    wait = CyclesWait(max_pause_s=0.0)
    collections: list[str] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            collections.append(phase)

    gc.callbacks.append(note)
    try:
        with wait():
            with wait():
                pass  # ends while the outer one still runs, the pause past its limit
            assert collections == ["stop"]
            assert not gc.isenabled()
    finally:
        gc.callbacks.remove(note)
    assert gc.isenabled()
