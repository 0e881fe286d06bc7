"""A full disk, for real: a 2 MiB tmpfs under the data dir fills up while a client posts 1-span batches.

A batch answered 503 is never counted (not now, not after a restart), and writes resume by themselves once
space is freed — no restart. Needs ``mount`` (root in this sandbox); skipped with the reason where it is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.server_process import ServerProcess
from tokentrace.core.timefmt import format_ms, now_ms


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def post_one(server: ServerProcess, n: int) -> int:
    body = [{"trace_id": f"t-{n}", "model": "m", "prompt_tokens": 10, "started_at": format_ms(now_ms() - 1000)}]
    request = urllib.request.Request(f"{server.url}/spans", json.dumps(body).encode(), {"Content-Type": "x/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def get(server: ServerProcess, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"{server.url}{path}", timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def total(server: ServerProcess) -> int:
    return int(get(server, "/metrics/total_spans?window=1h")[1]["value"])


@pytest.mark.slow
def test_a_full_disk_counts_only_what_was_acknowledged_and_recovers_by_itself(tiny_disk: Path, tmp_path: Path) -> None:
    server = ServerProcess(tiny_disk / "data")
    server.log = tmp_path / "server.log"  # not on the tiny disk
    filler = tiny_disk / "filler"
    try:
        server.start()
        stats = os.statvfs(tiny_disk)
        filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - 96 * 1024))
        acked = rejected = n = 0
        while rejected < 20:  # until the disk is full and stays full
            status = post_one(server, n)
            n += 1
            assert status in (202, 503), status
            acked += status == 202
            rejected += status == 503
            assert n < 20_000, "the disk never filled"
        assert acked > 0
        status, body = get(server, "/health")
        assert status == 503 and body["status"] == "unhealthy"
        assert total(server) == acked, "a batch answered 503 is not counted"

        filler.unlink()  # space is back: writes resume without a restart
        deadline = time.monotonic() + 60
        while post_one(server, n) != 202:
            n += 1
            assert time.monotonic() < deadline, "writes did not resume once space was freed"
            time.sleep(0.2)
        n += 1
        acked += 1
        for _ in range(5):
            assert post_one(server, n) == 202
            n += 1
            acked += 1
        status, body = get(server, "/health")
        assert status == 200 and body["status"] == "ok"
        assert total(server) == acked

        server.kill()  # replay from the log: a batch answered 503 must not come back
        server.start()
        assert total(server) == acked
    finally:
        server.stop()
