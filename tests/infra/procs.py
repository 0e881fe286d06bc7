"""Child server processes for tests: free loopback ports, start with a log file, stop, kill, wait.

Every child gets ``PR_SET_PDEATHSIG = SIGKILL``, so a test run that dies (even by SIGKILL) takes its
servers with it. Linux ties that signal to the *thread* that started the child: start servers from a
thread that outlives them (pytest's main thread does).
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "InfraError",
    "ServerProcess",
    "free_ports",
    "pid_alive",
    "port_accepts",
    "serve_until_signalled",
    "wait_for",
]

_PR_SET_PDEATHSIG = 1


class InfraError(RuntimeError):
    """A test server could not be fetched, started, reached or stopped."""


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports, below the kernel's ephemeral range.

    Ports from the ephemeral range could be taken by an outgoing connection while a killed server is
    down, so a restart on the same port could fail; ports below that range are only taken by listeners.
    """
    high = _ephemeral_start()
    low = max(1024, high - 12000)
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", random.randrange(low, high)))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ServerProcess:
    """One child process whose stdout and stderr go to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while started (also after it exited, until the next start)."""
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited, else None."""
        return self._proc.poll() if self._proc else None

    @property
    def running(self) -> bool:
        """Whether the process is started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process (appending to its log). Raises InfraError if it is already running."""
        if self.running:
            raise InfraError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                preexec_fn=_die_with_parent,
            )

    def terminate(self) -> None:
        """Send SIGTERM without waiting. No-op when not running."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the process has exited; False if it still runs after ``timeout`` seconds."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds. No-op when not running."""
        self.terminate()
        if not self.wait(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL and reap. No-op when not running."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def check_alive(self) -> None:
        """Raise InfraError with the log's tail if the process has exited."""
        proc = self._proc
        if proc is None:
            raise InfraError(f"{self.name} was never started")
        code = proc.poll()
        if code is not None:
            raise InfraError(f"{self.name} exited with code {code}; end of {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process log (empty when there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_for(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    procs: Sequence[ServerProcess] = (),
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until it returns True; fail fast if one of ``procs`` exits, InfraError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            proc.check_alive()
        if ready():
            return
        if time.monotonic() >= deadline:
            tails = "".join(f"\nend of {p.log_path}:\n{p.log_tail()}" for p in procs)
            raise InfraError(f"timed out after {timeout:.0f}s waiting for {what}{tails}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (used by tests to check that a kill really killed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_until_signalled(banner: Sequence[str], check_alive: Callable[[], None]) -> None:
    """Print ``banner`` and block until SIGINT or SIGTERM, checking the servers every second.

    The handlers go in before the banner: a reader that signals as soon as it sees the address must not
    meet the default SIGINT action. ``check_alive`` raises InfraError when a server died.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for line in banner:
        print(line, flush=True)
    while not stop.wait(1.0):
        check_alive()
