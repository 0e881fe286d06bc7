"""Readings from /proc and the checkout: CPU seconds of a process and of the machine, peak RSS, the CPU model,
the load average, and the commit measured.

CPU, not wall time, is what the benchmarks compare: the machine is shared, and a process's CPU seconds move
far less with the neighbours' load than its wall time does.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

__all__ = ["TICK", "code", "cpu_model", "cpu_seconds", "load", "machine_cpu", "peak_rss_mib"]

ROOT = Path(__file__).resolve().parents[2]
#: Clock ticks per second, the unit of /proc CPU times.
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_cpu() -> tuple[float, float]:
    """Seconds the machine's CPUs have been busy (neither idle nor waiting for I/O), and stolen, since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4] - fields[7]) / TICK, fields[7] / TICK


def peak_rss_mib(pid: int | None) -> float:
    """The process's peak resident set size (``VmHWM``) in MiB; 0 when it is not reported."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_model() -> str:
    """The CPU's model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def code() -> str:
    """The commit measured, and whether the product's code differed from it (others edit the tree too)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "processors", "tokentrace"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {head}" + (" with uncommitted changes in processors/ or tokentrace/" if dirty else "")
