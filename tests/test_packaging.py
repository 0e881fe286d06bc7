"""The one ``tokentrace`` namespace imports from a regular (non-editable) install and from the tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLE_FOLDERS = {"tokentrace": "tokentrace", "producers": "tokentrace.producers"}
ROLE_FOLDERS |= {"processors": "tokentrace.processors", "api": "tokentrace.api"}


def source_packages() -> set[str]:
    """Every package the repository holds, named as installed."""
    names = set()
    for folder, prefix in ROLE_FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            names.add(".".join([prefix, *relative.parts]))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("tokentrace-*.whl"))


def test_wheel_contains_every_package_and_the_openapi_document(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert source_packages() <= packaged, source_packages() - packaged
    assert "tokentrace/api/openapi.yaml" in names


def test_installed_wheel_imports_from_site_packages(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    modules = sorted(source_packages())
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), (name, module.__file__)\n"
        "import tokentrace.api.routes.docs as docs\n"
        "assert docs.openapi_document()['openapi'].startswith('3')\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_development_install_maps_role_folders() -> None:
    import tokentrace.api
    import tokentrace.processors
    import tokentrace.producers

    assert Path(tokentrace.producers.__file__ or "").parent == ROOT / "producers"
    assert Path(tokentrace.processors.__file__ or "").parent == ROOT / "processors"
    assert Path(tokentrace.api.__file__ or "").parent == ROOT / "api"
