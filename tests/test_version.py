"""The version: one owner (pyproject.toml), read from the package metadata, with a source checkout fallback."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import tokentrace.version
from tokentrace.api.context import VERSION, ServerContext

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_the_server_reports_the_pyproject_version() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert tokentrace.version.__version__ == declared
    assert declared == VERSION
    assert ServerContext.version == declared  # GET /health's "version"


def test_without_metadata_a_checkout_reads_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tokentrace.version, "version", missing)
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert tokentrace.version.package_version() == declared


def test_without_metadata_or_pyproject_the_version_says_unknown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tokentrace.version, "version", missing)
    monkeypatch.setattr(tokentrace.version, "__file__", str(tmp_path / "tokentrace" / "version.py"))
    assert tokentrace.version.package_version() == "0+unknown"
