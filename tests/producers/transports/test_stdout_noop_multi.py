"""Stdout, no-op and fan-out transports."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import pytest

from tests.producers.conftest import RecordingTransport
from tokentrace.core.codec import decode_json_spans
from tokentrace.core.pricing import PriceTable
from tokentrace.core.span import Span
from tokentrace.producers import MultiTransport, NoopTransport, StdoutTransport, Tracer, Transport


def spans(n: int) -> list[Span]:
    return [Span(model="m", prompt_tokens=i, name=f"s{i}") for i in range(n)]


def test_stdout_writes_one_json_object_per_line() -> None:
    out = io.StringIO()
    transport = StdoutTransport(out)
    batch = spans(3)
    transport.send(batch)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert [decode_json_spans(line.encode())[0] for line in lines] == batch
    assert json.loads(lines[0])["total_tokens"] == 0
    assert transport.stats().sent == 3


def test_stdout_defaults_to_the_current_sys_stdout(capsys: pytest.CaptureFixture[str], prices: PriceTable) -> None:
    with Tracer(transport=StdoutTransport(), prices=prices).start("job") as trace:
        trace.record(model="test-model", prompt_tokens=512, comp_tokens=128, latency_ms=1240)
    line = json.loads(capsys.readouterr().out)
    assert line["name"] == "job" and line["total_tokens"] == 640 and line["latency_ms"] == 1240


def test_stdout_write_errors_are_counted_not_raised() -> None:
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise ValueError("I/O operation on closed file")

    transport = StdoutTransport(Closed())
    transport.send(spans(2))
    stats = transport.stats()
    assert (stats.sent, stats.dropped, stats.failed_attempts) == (0, 2, 1)
    transport.close()
    transport.send(spans(1))
    assert transport.stats().dropped == 3


def test_noop_accepts_everything() -> None:
    transport = NoopTransport()
    transport.send(spans(5))
    transport.flush()
    transport.close()
    assert isinstance(transport, Transport)


def test_multi_fans_out_and_survives_a_failing_transport() -> None:
    class Exploding(RecordingTransport):
        def send(self, spans: Sequence[Span]) -> None:
            raise RuntimeError("broker gone")

        def flush(self, timeout: float | None = None) -> None:
            raise RuntimeError("broker gone")

    first, second = RecordingTransport(), RecordingTransport()
    multi = MultiTransport(first, Exploding(), second)
    batch = spans(4)
    multi.send(batch)
    multi.flush(1.0)
    multi.close()
    assert first.spans == batch and second.spans == batch
    assert multi.stats().failed_attempts == 2
    assert [s.name for s in multi.children_stats()] == ["recording", "recording", "recording"]
    with pytest.raises(ValueError):
        MultiTransport()
