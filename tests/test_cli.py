"""The tokentrace command: clear messages for bad input, a working serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.api.server_process import ServerProcess


def run(*args: str, env: dict[str, str] | None = None, module: str = "tokentrace") -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRACE_")} | (env or {})
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environ)


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


def test_one_app_has_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "demo", "check-config", "check-data", "worker", "api", "dev-cluster"):
        assert command in result.stdout, command


def test_serve_reads_tokentrace_variables_too(tmp_path: Path) -> None:
    env = {"TOKENTRACE_HTTP_SERVER_ADDR": "nowhere", "TOKENTRACE_STORAGE_DATA_DIR": str(tmp_path / "d")}
    result = run("serve", env=env)
    assert result.returncode == 2
    assert "invalid address" in result.stderr and "Traceback" not in result.stderr
    # A flag wins over the variable: the same environment with --max-spans 0 fails on the flag first.
    result = run("serve", "--max-spans", "0", env=env)
    assert result.returncode == 2 and "--max-spans" in result.stderr, result.stderr


def test_a_bad_variable_stops_every_command_naming_it(tmp_path: Path) -> None:
    env = {"TOKENTRACE_STORAGE_MAX_SPANS": "lots"}
    config = tmp_path / "tokentrace.yml"
    config.write_text("")
    nowhere = ["--bootstrap-servers", "127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1/0"]
    for args in (["serve", "--data-dir", str(tmp_path / "d")], ["check-config", str(config)], ["api", *nowhere]):
        result = run(*args, env=env)
        assert result.returncode == 2, (args, result.stderr[-500:])
        assert "TOKENTRACE_STORAGE_MAX_SPANS" in result.stderr and "Traceback" not in result.stderr


def test_check_config_prints_the_settings_with_variables_applied(tmp_path: Path) -> None:
    config = tmp_path / "tokentrace.yml"
    config.write_text("storage:\n  max_spans: 10\nkafka:\n  partitions: 2\n")
    result = run("check-config", str(config), env={"TOKENTRACE_KAFKA_PARTITIONS": "6"})
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert (settings["storage"]["max_spans"], settings["kafka"]["partitions"]) == (10, 6)


def test_worker_reads_the_older_variable_names() -> None:
    nowhere = ["--bootstrap-servers", "127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1/0"]
    result = run("worker", *nowhere, env={"TOKENTRACE_APP_ID": "team:a"})
    assert result.returncode == 2 and "got 'team:a'" in result.stderr, result.stderr[-500:]
