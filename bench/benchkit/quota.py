"""A CPU limit for one process, as a container's CPU limit sets it: a cgroup with a CFS quota.

``CpuQuota(0.4)`` makes a cgroup whose processes together get at most 0.4 of a core (40 ms of every 100 ms
period, all threads counted), ``add(pid)`` moves a process (every thread of it) in, ``throttled()`` reads
the share of periods in which the kernel held the group back, and ``close()`` removes the group once its
processes have ended. Works on cgroup v1 (the ``cpu`` hierarchy) and v2 (``cpu.max``); needs root and a
writable cgroup file system, and raises ``QuotaUnavailable`` saying so otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
_names = itertools.count(1)


class QuotaUnavailable(Exception):
    """This machine gives no way to cap a process's CPU (no writable cgroup with the cpu controller)."""


class CpuQuota:
    def __init__(self, cores: float) -> None:
        if cores <= 0:
            raise ValueError(f"a CPU quota must be more than 0 cores, not {cores}")
        self.cores = cores
        quota_us = max(1000, round(cores * PERIOD_US))
        name = f"tokentrace-bench-{os.getpid()}-{next(_names)}"
        try:
            if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists():  # v1: a hierarchy per controller
                self.path = CGROUP_ROOT / "cpu" / name
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
            elif "cpu" in (CGROUP_ROOT / "cgroup.controllers").read_text().split():  # v2: one unified tree
                (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu")
                self.path = CGROUP_ROOT / name
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
            else:
                raise QuotaUnavailable(f"no cgroup with the cpu controller under {CGROUP_ROOT}")
        except OSError as exc:
            raise QuotaUnavailable(
                f"cannot make a CPU-limited cgroup under {CGROUP_ROOT} ({exc}); this needs root and a writable "
                "cgroup file system"
            ) from exc

    def add(self, pid: int) -> None:
        """Move process ``pid`` and all its threads into the group; threads it starts later stay in it."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled(self) -> float:
        """Share of the CFS periods so far in which the group ran out of quota (0 to 1)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        periods = int(stat.get("nr_periods", 0))
        return int(stat.get("nr_throttled", 0)) / periods if periods else 0.0

    def close(self) -> None:
        """Remove the group; its processes must have ended (a group with processes in it cannot go)."""
        with contextlib.suppress(OSError):  # a process outlived its stop: the group stays, named after this one
            self.path.rmdir()
