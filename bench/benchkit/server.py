"""A real ``tokentrace serve`` subprocess with its CPU and memory readings, the machine, percentiles, RESULTS.md."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from benchkit.procfs import TICK

__all__ = ["RESULTS", "Server", "append_results", "machine", "percentile"]

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``tokentrace serve`` on a free loopback port over ``data_dir``; ``prefix`` wraps the command."""

    def __init__(self, data_dir: Path, prefix: list[str] | None = None, extra: list[str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}.log"
        command = [*(prefix or [sys.executable]), "-m", "tokentrace", "serve", "--addr", f"127.0.0.1:{self.port}"]
        command += ["--data-dir", str(data_dir.absolute()), *(extra or [])]
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        # Started in the data's directory: ``-m`` looks in the working directory first, so a server started from
        # a checkout would import that checkout's tokentrace whatever the interpreter (a baseline's ``prefix``).
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir.parent)
        self._wait_healthy()

    def _wait_healthy(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout_s}s: {self.log.read_text()[-2000:]}")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (an error once it is gone)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss_bytes(self) -> int:
        """Resident set size of the server process."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        """SIGTERM and wait (the server snapshots and exits; a profiler wrapper then writes its output)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(300)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def machine() -> str:
    """``lscpu`` model name and CPU count, Python version, and the load average right now."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"
    except (OSError, subprocess.CalledProcessError):
        model = f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} CPUs"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, Python {platform.python_version()}, load average {load}"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..1)."""
    rank = max(1, min(len(sorted_values), round(q * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def append_results(title: str, command: str, lines: list[str]) -> None:
    """Append one section to bench/RESULTS.md (creating it if needed), never touching other sections."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n")
    header = f"\n## {title}\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}\n\n`{command}`\n\n"
    with RESULTS.open("a") as out:
        out.write(header + "\n".join(lines) + "\n")
