"""``tokentrace serve`` as a real subprocess on a free loopback port, for kill -9 and restart tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """Starts, kills and restarts one embedded server over a fixed data dir and port."""

    def __init__(
        self, data_dir: Path, config: Path | None = None, extra: list[str] | None = None, token: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.extra = extra or []
        #: Sent as a bearer token by the health check in ``start``.
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 30.0) -> None:
        command = [sys.executable, "-m", "tokentrace", "serve", "--addr", f"127.0.0.1:{self.port}"]
        command += ["--data-dir", str(self.data_dir), *self.extra]
        if self.config is not None:
            command += ["--config", str(self.config)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            request = urllib.request.Request(f"{self.url}/health")
            if self.token is not None:
                request.add_header("Authorization", f"Bearer {self.token}")
            try:
                with urllib.request.urlopen(request, timeout=1) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, behind http_server.auth_token
                    return
                time.sleep(0.05)
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not become healthy: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
