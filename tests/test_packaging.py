"""The one ``tokentrace`` namespace imports from a regular (non-editable) install and from the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
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


REQUIRE_NATIVE = os.environ.get("TOKENTRACE_REQUIRE_NATIVE") == "1"


def build_wheel(out: Path, env: dict[str, str] | None = None, source: Path = ROOT) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        env=env,
    )
    return next(out.glob("tokentrace-*.whl"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def install_and_run(wheel: Path, target: Path, script: str) -> str:
    """Install ``wheel`` into ``target`` and run ``script`` with only that on the path; its output."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    # -S: no site, so the development install's finder (a .pth file) cannot supply modules the wheel lacks;
    # the dependencies come from site-packages on the path, after the wheel.
    site_packages = sysconfig.get_paths()["purelib"]
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        cwd=target.parent,
        env={"PYTHONPATH": os.pathsep.join([str(target), site_packages]), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_wheel_contains_every_package_and_the_openapi_document(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert source_packages() <= packaged, source_packages() - packaged
    assert "tokentrace/api/openapi.yaml" in names
    assert "tokentrace/_native.pyi" in names
    # The web console's files, so an installed server serves it (no Node toolchain at install time).
    console = ROOT / "api" / "console"
    shipped = {f"tokentrace/api/console/{p.relative_to(console).as_posix()}" for p in console.rglob("*") if p.is_file()}
    assert shipped and shipped <= names, shipped - names
    if REQUIRE_NATIVE:
        assert [n for n in names if n.startswith("tokentrace/_native") and n.endswith(".so")], sorted(names)


def test_installed_wheel_imports_from_site_packages(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    modules = sorted(source_packages())
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), (name, module.__file__)\n"
        "import tokentrace.api.routes.docs as docs\n"
        "assert docs.openapi_document()['openapi'].startswith('3')\n"
        "from tokentrace.api import console\n"
        "assert {'index.html', 'assets/app.js', 'vendor/uplot/uPlot.iife.min.js'} <= set(console._ASSETS)\n"
        "from tokentrace.core import native\n"
        "print('ok', native.AVAILABLE)\n"
    )
    output = install_and_run(wheel, target, script)
    assert output in ("ok True", "ok False"), output
    if REQUIRE_NATIVE:  # built with Rust: the installed wheel runs the compiled hot path
        assert output == "ok True"


def test_a_wheel_built_without_rust_runs_the_python_code(tmp_path: Path) -> None:
    """The compiled module is optional: with no cargo to be found the wheel is pure Python and works."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "cargo").exists())
    env = {**os.environ, "PATH": path, "CARGO": str(tmp_path / "no-cargo")}
    # A copy of the sources without build/ (which holds the compiled module of earlier builds).
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "target", "data", "*.so", "*.egg-info"))
    wheel = build_wheel(tmp_path / "out", env, source)
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.startswith("tokentrace/_native") and not n.endswith(".pyi")]
    script = (
        "from tokentrace.core import native\n"
        "from tokentrace.core.codec import decode_json_spans\n"
        'span, = decode_json_spans(b\'{"model": "m", "prompt_tokens": 3, "comp_tokens": 4}\')\n'
        "print(native.AVAILABLE, span.total_tokens)\n"
    )
    assert install_and_run(wheel, tmp_path / "site", script) == "False 7"


def test_development_install_maps_role_folders() -> None:
    import tokentrace.api
    import tokentrace.processors
    import tokentrace.producers

    assert Path(tokentrace.producers.__file__ or "").parent == ROOT / "producers"
    assert Path(tokentrace.processors.__file__ or "").parent == ROOT / "processors"
    assert Path(tokentrace.api.__file__ or "").parent == ROOT / "api"
