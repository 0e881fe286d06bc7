"""The tokentrace command: clear messages for bad input, a working serve."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.api.server_process import ServerProcess


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokentrace", *args], capture_output=True, text=True, timeout=60)


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "tokentrace.yml"
    config.write_text("http_server:\n  adr: oops\n")
    result = run("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "adr" in result.stderr and "Traceback" not in result.stderr


def test_bad_address_is_a_clear_error(tmp_path: Path) -> None:
    result = run("serve", "--addr", "nowhere", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "invalid address" in result.stderr and "Traceback" not in result.stderr


def test_names_kafka_would_refuse_are_clear_errors_before_any_connection() -> None:
    # No broker or Redis at these addresses: the names are refused first, in one line, with the key.
    nowhere = ["--bootstrap-servers", "127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1/0"]
    for command, flag, value in (
        ("worker", "--app-id", "team:a"),
        ("worker", "--topic", "spans of team a"),
        ("worker", "--dead-letter-topic", "poison/1"),
        ("api", "--topic", "spans of team a"),
    ):
        result = run(command, *nowhere, flag, value)
        assert result.returncode == 2, (command, flag, result.stderr[-500:])
        assert f"got '{value}'" in result.stderr and "Traceback" not in result.stderr


def test_check_config_prints_effective_settings(tmp_path: Path) -> None:
    config = tmp_path / "tokentrace.yml"
    config.write_text("http_server:\n  max_batch_size: 10\n")
    result = run("check-config", str(config))
    assert result.returncode == 0
    assert json.loads(result.stdout)["http_server"]["max_batch_size"] == 10


def test_serve_with_demo_traffic_shows_live_numbers(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra=["--demo", "--demo-rate", "200"])
    server.start()
    try:
        for _ in range(40):
            with urllib.request.urlopen(f"{server.url}/metrics?window=1h", timeout=5) as response:
                body = json.loads(response.read())
            if body["span_count"] > 0:
                break
            time.sleep(0.25)
        assert body["span_count"] > 0
        assert len(body["cost"]["by_model"]) >= 2
    finally:
        server.stop()
