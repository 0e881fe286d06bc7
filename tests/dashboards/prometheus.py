"""Debian's ``prometheus`` on a free loopback port, scraping given targets every second, for tests.

The config is written to a temp dir and checked with ``promtool check config`` before the server
starts; the TSDB lives in that dir too. :meth:`Prometheus.query` runs an instant query through the
HTTP API and returns the result vector, raising on any API error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from tests.infra.procs import InfraError, ServerProcess, free_ports, wait_for

__all__ = ["Prometheus", "promtool"]


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args`` and return the completed process (never raises on a non-zero exit)."""
    binary = shutil.which("promtool")
    if binary is None:
        raise InfraError("no `promtool` found: install Debian's `prometheus` or run scripts/install-test-deps")
    return subprocess.run(
        [binary, *args], input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=60
    )


class Prometheus:
    """One Prometheus server scraping ``targets`` (``host:port``) at ``metrics_path`` every second."""

    def __init__(self, workdir: Path, targets: list[str], metrics_path: str, rule_files: list[Path]) -> None:
        self.workdir = workdir
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": "tokentrace", "metrics_path": metrics_path, "static_configs": [{"targets": targets}]}
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        binary = shutil.which("prometheus")
        if binary is None:
            raise InfraError("no `prometheus` found: install Debian's `prometheus` or run scripts/install-test-deps")
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.process = ServerProcess("prometheus", argv, workdir / "prometheus.log")

    def check_config(self) -> subprocess.CompletedProcess[str]:
        """``promtool check config`` on the generated configuration."""
        return promtool("check", "config", str(self.config_path))

    def start(self, timeout: float = 20.0) -> None:
        self.process.start()
        wait_for(self._ready, timeout=timeout, what="prometheus /-/ready", procs=[self.process])

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str | list[str]) -> Any:
        """GET ``/api/v1/{path}`` and return its ``data``; InfraError on an error status."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise InfraError(f"{path} {params}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        if body.get("status") != "success":
            raise InfraError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (``[{"metric": {...}, "value": [ts, "v"]}, ...]``)."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise InfraError(f"{expr}: expected a vector, got {data['resultType']}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
