"""Damaged data files cost only the damaged bytes: nothing intact is deleted, the damage is moved aside and reported.

Each test runs a real ``tokentrace serve``, damages a file on disk the way a bad disk or an operator would, and
restarts it: every acknowledged span outside the damaged bytes is counted exactly once, the damaged file's bytes
are kept (in ``quarantine/``), and ``/health`` says ``degraded`` (200: reads are served) with the file's name.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.api.server_process import ServerProcess
from tokentrace.core.timefmt import format_ms, now_ms

SPANS_PER_BATCH = 10


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def health(server: ServerProcess) -> tuple[int, Any]:
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        return response.status, json.loads(response.read())


def post_batches(server: ServerProcess, prefix: str, count: int) -> list[str]:
    """``count`` batches of ``SPANS_PER_BATCH`` spans, one trace each; returns the trace ids (all acknowledged)."""
    start = format_ms(now_ms() - 1000)
    ids = []
    for n in range(count):
        trace_id = f"{prefix}-trace-{n:04d}"
        body = [
            {"trace_id": trace_id, "model": "gpt-4o", "prompt_tokens": 10, "comp_tokens": 1, "started_at": start}
            for _ in range(SPANS_PER_BATCH)
        ]
        request = urllib.request.Request(
            f"{server.url}/spans", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        ids.append(trace_id)
    return ids


def total(server: ServerProcess) -> int:
    return int(get(f"{server.url}/metrics/total_spans?window=1h")["value"])


def trace_span_count(server: ServerProcess, trace_id: str) -> int:
    try:
        return int(get(f"{server.url}/traces/{trace_id}")["span_count"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 0
        raise


def quarantined(data_dir: Path) -> list[Path]:
    folder = data_dir / "quarantine"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_one_damaged_wal_record_costs_only_that_record(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    try:
        server.start()
        ids = post_batches(server, "w", 100)
        server.kill()  # no final snapshot: everything lives in the log
        segments = sorted((tmp_path / "data" / "wal").glob("wal-*.log"), key=lambda p: p.stat().st_size)
        segment = segments[-1]
        data = bytearray(segment.read_bytes())
        victim = ids[10]
        at = data.find(victim.encode())
        assert at > 0 and data.find(victim.encode(), at + 1) > 0, "the victim's trace id is inside its record"
        data[at : at + 4] = b"\xff\xfe\xfd\xfc"  # 4 bytes overwritten in the middle of one record
        damaged = bytes(data)
        segment.write_bytes(damaged)

        server.start()
        assert total(server) == (len(ids) - 1) * SPANS_PER_BATCH, "every intact record after the damage is kept"
        assert trace_span_count(server, victim) == 0
        for trace_id in ids[:10] + ids[11:]:
            assert trace_span_count(server, trace_id) == SPANS_PER_BATCH, trace_id
        status, body = health(server)
        assert status == 200 and body["status"] == "degraded"
        assert segment.name in body["reason"]
        moved = quarantined(tmp_path / "data")
        assert [p.read_bytes() for p in moved] == [damaged], "the damaged bytes are kept, untouched, aside"

        # Nothing is lost on the next restart either (the repaired log, then snapshots, carry the records).
        server.stop()
        server.start()
        assert total(server) == (len(ids) - 1) * SPANS_PER_BATCH
    finally:
        server.stop()


def two_snapshot_generations(server: ServerProcess) -> tuple[list[str], Path]:
    """Two graceful stops (each takes a snapshot) around two rounds of spans; returns all ids and the newest."""
    server.start()
    ids = post_batches(server, "a", 30)
    server.stop()
    server.start()
    ids += post_batches(server, "b", 30)
    server.stop()
    newest = sorted(server.data_dir.glob("snapshot-*.bin"))[-1]
    return ids, newest


def test_a_truncated_snapshot_costs_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    try:
        ids, newest = two_snapshot_generations(server)
        data = newest.read_bytes()
        newest.write_bytes(data[: len(data) // 2])

        server.start()
        assert total(server) == len(ids) * SPANS_PER_BATCH
        for trace_id in ids[::7]:
            assert trace_span_count(server, trace_id) == SPANS_PER_BATCH
        status, body = health(server)
        assert status == 200 and body["status"] == "degraded"
        assert newest.name in body["reason"]
        assert [p.read_bytes() for p in quarantined(tmp_path / "data")] == [data[: len(data) // 2]]

        # Later snapshots never delete the quarantined file, and a restart still counts everything once.
        server.stop()
        server.start()
        assert total(server) == len(ids) * SPANS_PER_BATCH
        assert len(quarantined(tmp_path / "data")) == 1
    finally:
        server.stop()


def test_a_snapshot_with_changed_bytes_is_detected(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    try:
        ids, newest = two_snapshot_generations(server)
        data = bytearray(newest.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 14] = bytes(b ^ 0x5A for b in data[middle : middle + 14])
        newest.write_bytes(bytes(data))

        server.start()
        assert total(server) == len(ids) * SPANS_PER_BATCH
        for trace_id in ids:
            assert trace_span_count(server, trace_id) == SPANS_PER_BATCH
        status, body = health(server)
        assert status == 200 and body["status"] == "degraded"
        assert newest.name in body["reason"]
    finally:
        server.stop()
