"""A real Prometheus Alertmanager (Debian's ``prometheus-alertmanager``) for end-to-end alert tests.

It listens on a free loopback port, clustering off (``--cluster.listen-address=``), with its own temp
storage dir and a config that routes every alert to one webhook receiver (``send_resolved: true``) with
short ``group_wait``/``group_interval`` so notifications arrive within a second.
``python -m tests.infra.alertmanager http://127.0.0.1:PORT/hook`` runs one in the foreground.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

import yaml

from tests.infra.procs import ChildServer, InfraError, ServerProcess, free_ports, serve_until_signalled

__all__ = ["Alertmanager"]


def _binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found is None:
        raise InfraError(
            "no `prometheus-alertmanager` found: install Debian's `prometheus-alertmanager` "
            "or run scripts/install-test-deps"
        )
    return found


class Alertmanager(ChildServer):
    """One Alertmanager process whose single route posts to ``webhook_url``."""

    def __init__(
        self,
        webhook_url: str,
        *,
        group_wait: str = "100ms",
        group_interval: str = "300ms",
        repeat_interval: str = "1h",
        startup_timeout: float = 30.0,
    ) -> None:
        self.webhook_url = webhook_url
        self.route = {
            "receiver": "test-webhook",
            "group_by": ["alertname"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        }
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = free_ports(1)[0]
        self.dir: Path | None = None
        self._process: ServerProcess | None = None

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        """The alertmanager.yml contents."""
        return {
            "route": self.route,
            "receivers": [
                {
                    "name": "test-webhook",
                    "webhook_configs": [{"url": self.webhook_url, "send_resolved": True}],
                }
            ],
        }

    def start(self) -> Self:
        """Write the config, start the server and wait until ``/-/ready`` answers."""
        binary = _binary()
        self.dir = Path(tempfile.mkdtemp(prefix="tokentrace-alertmanager-"))
        config = self.dir / "alertmanager.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ]
        process = ServerProcess(f"alertmanager :{self.port}", argv, self.dir / "alertmanager.log", cwd=self.dir)
        self._launch(
            process, self._ready, timeout=self.startup_timeout, what=f"alertmanager on port {self.port}", interval=0.05
        )
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: the alerts Alertmanager holds as not resolved (blocking call)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5.0) as response:
            result: list[dict[str, Any]] = json.loads(response.read())
        return result

    def stop(self) -> None:
        """Stop the server and delete its dir. Idempotent."""
        if self._process is not None:
            self._process.stop(10.0)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m tests.infra.alertmanager WEBHOOK_URL", file=sys.stderr)
        return 2
    try:
        with Alertmanager(sys.argv[1]) as server:
            serve_until_signalled([server.url], server.process.check_alive)
        return 0
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
