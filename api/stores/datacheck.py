"""``tokentrace check-data DIR``: verify an embedded data dir offline, file by file, changing nothing.

Snapshots are checked against their checksum and decoded; log segments are scanned record by record (CRC and
decoding) and for gaps after the newest intact snapshot; anything in ``quarantine/`` is listed. A torn tail (an
append cut by a crash, never acknowledged) is noted but is not a problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokentrace.api.stores.embedded import SNAPSHOT_VERSION, read_snapshot
from tokentrace.api.stores.quarantine import Quarantine
from tokentrace.api.stores.records import decode_record
from tokentrace.api.stores.snapshot_file import DamagedFile
from tokentrace.api.stores.wal import segment_name, segment_seq
from tokentrace.api.stores.wal_format import scan_segment

__all__ = ["FileReport", "check_data_dir"]


@dataclass
class FileReport:
    path: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'PROBLEM':8} {self.path}: {self.detail}"


def _check_snapshot(path: Path) -> tuple[FileReport, int | None]:
    try:
        snapshot, verified = read_snapshot(path.read_bytes())
    except (OSError, DamagedFile) as exc:
        return FileReport(path.name, False, f"damaged: {exc}"), None
    if snapshot.version != SNAPSHOT_VERSION:
        return FileReport(path.name, False, f"unknown snapshot version {snapshot.version}"), None
    how = "checksum verified" if verified else "format 1, no checksum (decoded)"
    detail = f"{how}; {snapshot.span_total} spans counted; the log from segment {snapshot.wal_seq} follows it"
    return FileReport(path.name, True, detail), snapshot.wal_seq


def _check_segment(path: Path) -> FileReport:
    name = f"wal/{path.name}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return FileReport(name, False, f"unreadable: {exc}")
    scan = scan_segment(raw)
    undecodable = 0
    for start, end in scan.records:
        try:
            decode_record(raw[start:end])
        except Exception:  # a record this build cannot apply: the server skips it too
            undecodable += 1
    detail = scan.describe()
    if scan.torn_tail and not scan.damaged:
        detail += " (an append cut by a crash: never acknowledged)"
    if undecodable:
        detail += f"; {undecodable} records do not decode"
    return FileReport(name, not scan.damaged and not undecodable, detail)


def check_data_dir(data_dir: Path) -> list[FileReport]:
    """One report per file (and per gap in the log); every ``ok`` means the data dir is whole."""
    reports: list[FileReport] = []
    replay_from: int | None = None
    for path in sorted(data_dir.glob("snapshot-*.bin"), reverse=True):
        report, seq = _check_snapshot(path)
        reports.append(report)
        if seq is not None and replay_from is None:
            replay_from = seq
    segments = sorted(data_dir.glob("wal/wal-*.log"))
    reports += [_check_segment(path) for path in segments]
    expected = 0 if replay_from is None else replay_from
    for seq in (s for s in map(segment_seq, segments) if s >= expected):
        if seq != expected:
            gap = f"wal/{segment_name(expected)}..{segment_name(seq - 1)}"
            reports.append(FileReport(gap, False, "missing: no intact snapshot covers the spans they held"))
        expected = seq + 1
    reports += [
        FileReport(f"quarantine/{name}", False, "moved aside by the server at a start; delete once inspected")
        for name in Quarantine(data_dir).files()
    ]
    return reports
