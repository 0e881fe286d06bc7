"""Child server processes: free loopback ports, start with a log file, stop, kill, wait.

Each child runs in a process group of its own (``start_new_session``), so stopping it signals everything
it started too, and a Ctrl-C in the terminal reaches only the supervisor, which then stops the children
in order. Every child also gets ``PR_SET_PDEATHSIG = SIGKILL``, so a supervisor that dies (even by
SIGKILL) takes its children with it. Linux ties that signal to the *thread* that started the child:
start servers from a thread that outlives them (the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "ChildServer",
    "DevClusterError",
    "ServerProcess",
    "Service",
    "find_tool",
    "free_ports",
    "pid_alive",
    "port_accepts",
    "port_free",
    "wait_for",
]

_PR_SET_PDEATHSIG = 1


class DevClusterError(RuntimeError):
    """A server could not be fetched, started, reached or stopped (the message says what to do)."""


def find_tool(name: str, package: str, *, path: str | None = None) -> str:
    """The executable ``name`` on ``PATH`` (or ``path``), then in /usr/sbin; else an error naming its package."""
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    found = shutil.which(name, path=f"{search}{os.pathsep}/usr/sbin")
    if found is None:
        raise DevClusterError(f"no `{name}` found on PATH: install it (Debian/Ubuntu package `{package}`)")
    return found


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


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (bound with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError:
            return False
    return True


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
    """One child process (the leader of its own process group) whose stdout and stderr go to ``log_path``."""

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
        """Start the process (appending to its log). Raises DevClusterError if it is already running."""
        if self.running:
            raise DevClusterError(f"{self.name} is already running (pid {self.pid})")
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
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's process group (what is left of it, also after the leader exited)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM to the process group without waiting. No-op when not running."""
        if self._proc is not None and self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)

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
        else:
            self._signal_group(signal.SIGKILL)  # anything the child left behind in its group

    def kill(self) -> None:
        """SIGKILL the process group and reap the child. No-op when not running."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._signal_group(signal.SIGKILL)
        proc.kill()
        proc.wait()

    def check_alive(self) -> None:
        """Raise DevClusterError with the log's tail if the process has exited."""
        proc = self._proc
        if proc is None:
            raise DevClusterError(f"{self.name} was never started")
        code = proc.poll()
        if code is not None:
            raise DevClusterError(f"{self.name} exited with code {code}; end of {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process log (empty when there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Service:
    """Something ``start()`` runs and ``stop()`` (idempotent) ends; ``with`` does both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ChildServer(Service):
    """A server run as one ``ServerProcess``: what every such wrapper shares (its process, ``log_tail`` and
    the start-and-wait step). A subclass defines ``start`` (build the process, then ``_launch`` it) and
    ``stop`` (stop the process and clean up)."""

    _process: ServerProcess | None = None

    @property
    def process(self) -> ServerProcess:
        """The server process (after ``start()``)."""
        if self._process is None:
            raise DevClusterError(f"{type(self).__name__} not started")
        return self._process

    def _launch(
        self, process: ServerProcess, ready: Callable[[], bool], *, timeout: float, what: str, interval: float
    ) -> None:
        """Start ``process`` and wait until ``ready()``; if anything fails, ``stop()`` (which cleans up) and re-raise."""
        self._process = process
        try:
            process.start()
            wait_for(ready, timeout=timeout, what=what, procs=[process], interval=interval)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server log."""
        return self.process.log_tail(lines)


def wait_for(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    procs: Sequence[ServerProcess] = (),
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until it returns True; fail fast if one of ``procs`` exits, DevClusterError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            proc.check_alive()
        if ready():
            return
        if time.monotonic() >= deadline:
            tails = "".join(f"\nend of {p.log_path}:\n{p.log_tail()}" for p in procs)
            raise DevClusterError(f"timed out after {timeout:.0f}s waiting for {what}{tails}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
