"""Reading /proc to find what a command left behind: descendants by parent id, processes by an env marker."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tokentrace.devcluster.procs import pid_alive

__all__ = ["children", "descendants", "in_groups", "living", "living_after", "marked"]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...), empty once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> set[int]:
    """The direct children of ``pid`` now."""
    return {p for p in _pids() if _ppid(p) == pid}


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the tree now."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        below = {p for p in _pids() if _ppid(p) in frontier} - found
        found |= below
        frontier = below
    return found


def in_groups(pgids: set[int]) -> set[int]:
    """The live processes in one of these process groups (what a child started, even if reparented)."""
    return {p for p in _pids() if (fields := _stat(p)) and int(fields[2]) in pgids and pid_alive(p)}


def marked(name: str, value: str) -> set[int]:
    """The live processes whose environment has ``name=value`` (children inherit it, wherever reparented).

    Not every process keeps its environment readable: redis-server writes its title over it.
    """
    needle = f"{name}={value}".encode()
    hits = set()
    for pid in _pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and pid_alive(pid):
            hits.add(pid)
    return hits


def living(pids: set[int]) -> set[int]:
    """Those of ``pids`` still alive (zombies count as dead)."""
    return {pid for pid in pids if pid_alive(pid)}


def living_after(pids: set[int], within: float = 5.0) -> set[int]:
    """Those of ``pids`` still alive after up to ``within`` s.

    A SIGKILLed process that its killer did not reap itself (a grandchild, or a child whose parent was killed)
    dies when the kernel gets to it: on a loaded machine not at once, so a check right after the kill waits.
    """
    deadline = time.monotonic() + within
    while (alive := living(pids)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive
