"""File transport: JSONL append, crash-torn lines, rotation, I/O errors."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from tokentrace.core.codec import encode_json
from tokentrace.core.pricing import PriceTable
from tokentrace.core.span import Span
from tokentrace.producers import FileTransport, Tracer, read_spans


def spans(n: int, start: int = 0) -> list[Span]:
    return [Span(model="m", prompt_tokens=i, name=f"s{i}") for i in range(start, start + n)]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "traces.jsonl"
    batch = spans(5)
    with FileTransport(path) as transport:
        transport.send(batch[:2])
        transport.send(batch[2:])
        transport.flush()
        assert transport.stats().sent == 5
    result = read_spans(path)
    assert result.spans == batch and (result.torn, result.skipped) == (0, 0)
    assert path.read_bytes().count(b"\n") == 5


def test_appends_across_writers(tmp_path: Path, prices: PriceTable) -> None:
    path = tmp_path / "traces.jsonl"
    for run in range(3):
        with Tracer(transport=FileTransport(path), prices=prices) as tracer, tracer.start(f"run{run}") as trace:
            trace.record(model="test-model", prompt_tokens=run)
    assert [s.name for s in read_spans(path).spans] == ["run0", "run1", "run2"]


def test_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    good = spans(3)
    torn = encode_json(spans(1, 99)[0])[:40]  # the writer died mid-line
    path.write_bytes(b"".join(encode_json(s) + b"\n" for s in good) + torn)
    result = read_spans(path)
    assert result.spans == good and result.torn == 1 and result.skipped == 0


def test_next_writer_seals_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_bytes(encode_json(spans(1)[0]) + b"\n" + b'{"trace_id":"abc","mod')
    with FileTransport(path) as transport:
        transport.send(spans(2, 10))
    result = read_spans(path)
    assert [s.name for s in result.spans] == ["s0", "s10", "s11"]  # new spans did not merge into the torn line
    assert (result.torn, result.skipped) == (0, 1) and "line 2" in result.errors[0]


def test_last_line_without_newline_that_decodes_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_bytes(encode_json(spans(1)[0]))
    result = read_spans(path)
    assert len(result.spans) == 1 and result.torn == 0


def _write_forever(path: str) -> None:
    transport = FileTransport(path)
    i = 0
    while True:
        transport.send(spans(50, i))
        i += 50


def test_reader_survives_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    process = multiprocessing.get_context("fork").Process(target=_write_forever, args=(str(path),))
    process.start()
    try:
        for _ in range(500):
            if path.exists() and path.stat().st_size > 200_000:
                break
            process.join(0.01)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.join(10)
    result = read_spans(path)
    assert result.skipped == 0 and result.torn in (0, 1)
    names = [s.name for s in result.spans]
    assert names == [f"s{i}" for i in range(len(names))]  # every complete line, in order
    with FileTransport(path) as transport:  # a restarted writer appends cleanly
        transport.send(spans(1, 10**6))
    after = read_spans(path)
    assert after.spans[-1].name == f"s{10**6}" and after.torn == 0 and after.skipped == result.torn


def test_rotation(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    same_size = [Span(model="m", prompt_tokens=1, name=f"s{i:02d}") for i in range(13)]
    line = len(encode_json(same_size[0])) + 1
    with FileTransport(path, max_bytes=line * 4, backups=2) as transport:
        for span in same_size:
            transport.send([span])

    def names(p: Path) -> list[str]:
        return [s.name for s in read_spans(p).spans]

    rotated1, rotated2 = path.with_name("traces.jsonl.1"), path.with_name("traces.jsonl.2")
    assert names(path) == ["s12"]
    assert names(rotated1) == ["s08", "s09", "s10", "s11"]
    assert names(rotated2) == ["s04", "s05", "s06", "s07"]
    assert not path.with_name("traces.jsonl.3").exists()
    assert all(p.stat().st_size <= line * 4 for p in (path, rotated1, rotated2))


def test_io_errors_are_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    transport = FileTransport(blocker / "traces.jsonl")
    transport.send(spans(3))
    transport.send(spans(2))
    stats = transport.stats()
    assert (stats.sent, stats.dropped, stats.failed_attempts) == (0, 5, 2)
    transport.close()


def test_send_after_close_is_dropped(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path / "t.jsonl")
    transport.close()
    transport.send(spans(2))
    assert transport.stats().dropped == 2


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"backups": -1}])
def test_bad_settings(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        FileTransport(tmp_path / "t.jsonl", **kwargs)
