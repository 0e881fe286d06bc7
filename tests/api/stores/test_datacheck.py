"""``tokentrace check-data DIR``: 0 for a whole data dir, 1 with a line per damaged file; it changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.api.stores.test_embedded_durability import open_store, spans


def check(data: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tokentrace", "check-data", str(data)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def tree(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


async def make_data_dir(data: Path) -> None:
    """Two snapshot generations, then a log segment no snapshot covers yet."""
    store = await open_store(data)
    for round_ in range(2):
        await store.ingest(spans(f"s{round_}", 5))
        await store._snapshot()
    for n in range(20):
        await store.ingest(spans(f"log-{n:02d}", 5))
    assert store._wal is not None
    await store._wal.close()  # as kill -9 leaves it: no final snapshot


async def test_a_whole_data_dir_checks_clean(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await make_data_dir(data)
    result = check(data)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].endswith(", 0 with problems")
    assert all(line.startswith("ok") for line in lines[:-1]) and len(lines) > 3


async def test_damage_is_reported_per_file_and_nothing_is_changed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await make_data_dir(data)
    segment = max(data.glob("wal/wal-*.log"), key=lambda p: p.stat().st_size)
    raw = bytearray(segment.read_bytes())
    at = raw.find(b"log-05")
    raw[at : at + 4] = b"\0\0\0\0"
    segment.write_bytes(bytes(raw))
    newest = sorted(data.glob("snapshot-*.bin"))[-1]
    newest.write_bytes(newest.read_bytes()[:-10])
    before = tree(data)

    result = check(data)
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 2
    assert any(segment.name in line and "damaged region" in line for line in problems)
    assert any(newest.name in line and "truncated" in line for line in problems)
    assert tree(data) == before, "check-data only reads"


def test_a_missing_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = check(tmp_path / "nope")
    assert result.returncode == 2 and "not a directory" in " ".join(result.stderr.split())
