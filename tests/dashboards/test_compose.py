"""``docker-compose.yml``, its configs and the ``Dockerfile`` are consistent (Docker itself cannot run here).

Checked: images pinned, mounted files present, published ports distinct, healthchecks behind every
``depends_on``, the tokentrace services' commands, flags and environment against the CLI and
``tokentrace.yml``, host names and ports between the configs, ``promtool check config`` and
``amtool check-config``, and that the Docker build context is enough for ``pip install .``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

from tests.dashboards.expressions import DASHBOARD, ROOT
from tests.dashboards.prometheus import promtool
from tests.test_packaging import source_packages
from tokentrace.cli import app
from tokentrace.config import Config, parse_config
from tokentrace.core.alerts.deliveries import AlertmanagerDelivery
from tokentrace.core.alerts.rules import rules_from_config

COMPOSE = ROOT / "docker-compose.yml"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
STACK = {"kafka", "redis", "worker", "api", "demo", "prometheus", "alertmanager", "webhook", "grafana"}
_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _tokentrace_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s["image"].startswith("tokentrace:")}


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with an empty environment: the defaults."""
    return _COMPOSE_VAR.sub(lambda m: m[2] or "", value)


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → repository file of each bind mount (``./src:/dst[:ro]``)."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            binds[target] = (ROOT / source).resolve()
    return binds


def _mounted_config(service: dict[str, Any]) -> Path:
    command = service["command"]
    return _binds(service)[command[command.index("--config") + 1]]


def _tokentrace_config(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Config:
    for key, value in service.get("environment", {}).items():
        monkeypatch.setenv(key, _interpolate(str(value)))
    path = _mounted_config(service)
    return parse_config(path.read_text(), str(path))


def _host_port(url_or_address: str) -> tuple[str, int]:
    parts = urlsplit(url_or_address if "//" in url_or_address else f"//{url_or_address}")
    assert parts.hostname and parts.port, url_or_address
    return parts.hostname, parts.port


def _cli_commands() -> dict[str, Any]:
    """The ``tokentrace`` subcommands (typer's click commands, with ``params``), by name."""
    commands: dict[str, Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    return commands


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1]) for p in service.get("ports", [])}


def test_the_whole_stack_is_there(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == STACK
    assert {k for k in compose if not k.startswith("x-")} == {"name", "services", "volumes"}
    assert services["demo"]["profiles"] == ["demo"]


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
        if "build" in service:
            assert service["build"] == "." and tag == VERSION, f"{name}: build tokentrace:{VERSION}"
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", services["kafka"]["image"])
    assert set(_tokentrace_services(services)) == {"worker", "api", "demo"}


def test_mounted_files_exist_and_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    used: set[str] = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert PurePosixPath(target).is_absolute(), f"{name}: {volume}"
            if source.startswith((".", "/")):
                path = (ROOT / source).resolve()
                assert path.is_file() and path.is_relative_to(ROOT), f"{name}: {source} is not a file of the repo"
            else:
                used.add(source)
    assert used == set(compose["volumes"])


def test_published_ports_do_not_collide_and_workers_scale(services: dict[str, dict[str, Any]]) -> None:
    published = [int(str(p).split(":")[0]) for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), published
    assert set(published) == {29092, 9090, 9091, 9093, 3000}
    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker
    assert not any("container_name" in s for s in services.values())


def test_healthchecks_and_dependencies(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "profiles" not in service:
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no healthcheck"
    assert set(services["worker"]["depends_on"]) == set(services["api"]["depends_on"]) == {"kafka", "redis"}
    assert set(services["grafana"]["depends_on"]) == {"prometheus"}

    def reaches(start: str, seen: tuple[str, ...]) -> None:
        for dependency in services[start].get("depends_on", {}):
            assert dependency not in seen, f"dependency cycle: {' -> '.join((*seen, dependency))}"
            reaches(dependency, (*seen, dependency))

    for name in services:
        reaches(name, (name,))


def test_tokentrace_commands_and_flags_exist(services: dict[str, dict[str, Any]]) -> None:
    """Each service runs a ``tokentrace`` subcommand with options it has (worker and api: issue 6)."""
    commands = _cli_commands()
    for name, service in _tokentrace_services(services).items():
        command, *args = service["command"]
        assert command in commands, f"{name}: `tokentrace {command}` does not exist (yet)"
        options = {opt for param in commands[command].params for opt in param.opts}
        for arg in args:
            if arg.startswith("-"):
                assert arg in options, f"{name}: `tokentrace {command}` has no {arg}"


def test_tokentrace_environment_is_what_the_config_reads(services: dict[str, dict[str, Any]]) -> None:
    commands = _cli_commands()
    for name, service in _tokentrace_services(services).items():
        text = _mounted_config(service).read_text() if "--config" in service["command"] else ""
        command = commands.get(service["command"][0])
        envvars = {p.envvar for p in command.params if isinstance(p.envvar, str)} if command else set()
        for key in service.get("environment", {}):
            assert key.startswith("TOKENTRACE_"), f"{name}: {key}"
            assert f"${{{key}" in text or key in envvars, f"{name}: nothing reads {key}"


def test_tokentrace_config_points_at_the_stack(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("worker", "api"):
        config = _tokentrace_config(services[name], monkeypatch)
        kafka = _host_port(config.kafka.bootstrap_servers)
        listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert f"PLAINTEXT://{kafka[0]}:{kafka[1]}" in listeners.split(","), f"{name}: {kafka}"
        redis = _host_port(config.redis.url)
        assert redis == ("redis", 6379) and urlsplit(config.redis.url).scheme == "redis"
        assert config.http_server.auth_token is None  # TOKENTRACE_API_TOKEN unset: no auth
        assert config.storage.data_dir == "/var/lib/tokentrace"  # created and owned by the Dockerfile
        deliveries = [r.delivery for r in rules_from_config(config.alerts)]
        assert any(isinstance(d, AlertmanagerDelivery) for d in deliveries)
        for delivery in deliveries:
            if isinstance(delivery, AlertmanagerDelivery):
                host, port = _host_port(delivery.url)
                assert host == "alertmanager" and port in _container_ports(services["alertmanager"])


def test_api_port_healthcheck_and_scrape_target_agree(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = services["api"]
    config = _tokentrace_config(api, monkeypatch)
    port = int(config.http_server.addr.rsplit(":", 1)[1])
    assert _container_ports(api) == {port}
    assert f"127.0.0.1:{port}/health" in " ".join(api["healthcheck"]["test"])
    demo_url = services["demo"]["command"][services["demo"]["command"].index("--url") + 1]
    assert _host_port(demo_url) == ("api", port)
    prometheus = yaml.safe_load(_binds(services["prometheus"])["/etc/prometheus/prometheus.yml"].read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "tokentrace")
    assert job["metrics_path"] == config.http_server.prometheus_path
    assert job["static_configs"][0]["targets"] == [f"api:{port}"]
    alertmanagers = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert [_host_port(t) for t in alertmanagers] == [("alertmanager", 9093)]
    assert 9093 in _container_ports(services["alertmanager"])


def test_compose_prometheus_config_passes_promtool(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """Rule files are resolved through the compose mounts, so a rule file that is not mounted fails."""
    binds = _binds(services["prometheus"])
    config = yaml.safe_load(binds["/etc/prometheus/prometheus.yml"].read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/tokentrace.yml"]
    config["rule_files"] = [str(binds[path]) for path in config["rule_files"]]
    assert config["rule_files"] == [str(ROOT / "dashboards" / "prometheus-rules.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 12 rules found" in checked.stdout


def test_compose_alertmanager_config_passes_amtool(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "no `amtool`: install Debian's prometheus-alertmanager (scripts/install-test-deps)"
    path = _binds(services["alertmanager"])["/etc/alertmanager/alertmanager.yml"]
    checked = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(path.read_text())
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and all(_host_port(u) == ("webhook", 8080) for u in urls)
    assert str(services["webhook"]["environment"]["HTTP_PORT"]) == "8080"
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(path.read_text().replace("receiver: example-webhook", "receiver: missing"))
    assert subprocess.run([amtool, "check-config", str(broken)], capture_output=True).returncode != 0


def test_grafana_provisions_the_datasource_and_the_dashboard(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    binds = _binds(grafana)
    dashboards = [target for target, source in binds.items() if source == DASHBOARD]
    assert len(dashboards) == 1
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboards[0]
    providers = yaml.safe_load(binds["/etc/grafana/provisioning/dashboards/tokentrace.yml"].read_text())
    assert [p["options"]["path"] for p in providers["providers"]] == [str(PurePosixPath(dashboards[0]).parent)]
    sources = yaml.safe_load(binds["/etc/grafana/provisioning/datasources/tokentrace.yml"].read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and _host_port(source["url"]) == ("prometheus", 9090)
    assert 9090 in _container_ports(services["prometheus"])
    variable = json.loads(DASHBOARD.read_text())["templating"]["list"][0]
    assert variable["name"] == "datasource" and variable["current"]["value"] == source["uid"]


def test_dockerfile_and_build_context(tmp_path: Path) -> None:
    """The context .dockerignore lets through is enough to build the wheel the Dockerfile installs, compiled
    hot path included (its build stage refuses a wheel without it)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", dockerfile, re.M)
    assert [image for image, _ in stages][-1] == "python:3.11-slim"  # the runtime
    assert re.match(r"rust:[\d.]+-slim-bookworm$", stages[0][0]), stages  # bookworm's Python is 3.11 too
    assert f"COPY --from={stages[0][1]} /wheels /wheels" in dockerfile
    assert re.search(r"pip wheel --no-deps --no-build-isolation -w /wheels \.", dockerfile)
    assert 'ENTRYPOINT ["tokentrace"]' in dockerfile and re.search(
        r"^RUN pip install /wheels/\*\.whl", dockerfile, re.M
    )
    assert re.search(r"^USER tokentrace$", dockerfile, re.M) and "chown tokentrace /var/lib/tokentrace" in dockerfile
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "**", "the context starts empty and names what goes in"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        copied |= set(line.split()[:-1])
    assert copied == included
    context = tmp_path / "context"
    for name in included:
        source = ROOT / name
        if source.is_dir():
            ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "target")
            shutil.copytree(source, context / name, ignore=ignored)
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(source, context / name)
    out = tmp_path / "wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CARGO_TARGET_DIR": str(ROOT / "native" / "target")},  # reuse compiled crates
    )
    assert built.returncode == 0, built.stderr
    with zipfile.ZipFile(next(out.glob("tokentrace-*.whl"))) as archive:
        names = set(archive.namelist())
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert source_packages() <= packaged
    assert "tokentrace/api/openapi.yaml" in names
    if os.environ.get("TOKENTRACE_REQUIRE_NATIVE") == "1":
        assert [n for n in names if n.startswith("tokentrace/_native") and n.endswith(".so")], sorted(names)
