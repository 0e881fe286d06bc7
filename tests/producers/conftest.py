"""Fixtures for SDK tests: a recording transport, a tracer on it, a real local span server."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from tests.producers.spanserver import SpanServer
from tokentrace.core.pricing import ModelPrices, PriceTable
from tokentrace.core.span import Span
from tokentrace.producers import Tracer, TransportStats

#: Prices the tests can compute by hand: $1 / $2 per million input / output tokens, cache reads $0.5.
TEST_PRICES = {"test-model": ModelPrices(input=1.0, output=2.0, cache_read=0.5, cache_write=1.25)}


class RecordingTransport:
    """Keeps every batch it is sent (in order)."""

    def __init__(self) -> None:
        self.batches: list[list[Span]] = []
        self._lock = threading.Lock()

    def send(self, spans: Sequence[Span]) -> None:
        with self._lock:
            self.batches.append(list(spans))

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def stats(self) -> TransportStats:
        return TransportStats(name="recording", sent=len(self.spans))

    @property
    def spans(self) -> list[Span]:
        return [s for batch in self.batches for s in batch]


@pytest.fixture
def recording() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def prices() -> PriceTable:
    return PriceTable(TEST_PRICES, use_library=False)


@pytest.fixture
def tracer(recording: RecordingTransport, prices: PriceTable) -> Tracer:
    return Tracer(transport=recording, caller="test-service", prices=prices)


@pytest.fixture
def span_server() -> Iterator[SpanServer]:
    server = SpanServer().start()
    yield server
    server.stop()
