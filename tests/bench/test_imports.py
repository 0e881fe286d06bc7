"""The benchmarks are tools: each bench/ script imports public API and the one helper package, bench/benchkit.

An AST walk over bench/*.py and bench/benchkit/*.py fails on ``sys.path`` edits, imports of the test suite
(``tests.``), imports of another bench script (only ``benchkit`` is shared), underscore names imported from
tokentrace or bench (``from x import _y``, ``tokentrace._native``) and private attributes reached on other
objects (``store._apply``, ``getattr(timefmt, "_CACHE")``; ``self._x`` is a class's own business). And every
script starts as ``python bench/<script>.py --help`` from a directory other than the checkout, which is how
they are run: bench/ on ``sys.path`` by itself and nothing else.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_modules() -> set[str]:
    """Top-level names a bench script can import from bench/: its scripts and the helper package."""
    return {path.stem for path in BENCH.glob("*.py")} | {"benchkit"}


def violations(source: str, local: set[str]) -> list[str]:
    """What in ``source`` (a bench script) breaks the rule, one line each with its line number."""
    found: list[str] = []

    def check_module(module: str, line: int) -> None:
        top = module.split(".")[0]
        if top == "tests":
            found.append(f"{line}: imports the test suite ({module})")
        elif top in local and top != "benchkit":
            found.append(f"{line}: imports another bench script ({module}); shared code belongs in benchkit")
        if top in ("tokentrace", "benchkit") and any(part.startswith("_") for part in module.split(".")[1:]):
            found.append(f"{line}: imports a private module ({module})")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            module = node.module or ""
            if node.level:
                found.append(f"{node.lineno}: relative import (.{module}); import benchkit modules by name")
                continue
            check_module(module, node.lineno)
            if module.split(".")[0] in ("tokentrace", *local):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.append(f"{node.lineno}: imports the private name {alias.name} from {module}")
        elif isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id == "sys" and node.attr == "path":
                found.append(f"{node.lineno}: uses sys.path")
            elif _private(node.attr) and not (isinstance(value, ast.Name) and value.id in ("self", "cls")):
                found.append(f"{node.lineno}: reaches the private attribute .{node.attr}")
        elif isinstance(node, ast.Call) and (name := _private_by_name(node)):
            found.append(f"{node.lineno}: reaches the private attribute {name!r} by {ast.unparse(node.func)}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def _private_by_name(call: ast.Call) -> str | None:
    """The private attribute a ``getattr``/``setattr``/``hasattr`` call names, if it names one."""
    if isinstance(call.func, ast.Name) and call.func.id in ("getattr", "setattr", "hasattr") and len(call.args) > 1:
        name = call.args[1]
        if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
            return name.value
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def checked_files() -> list[Path]:
    scripts = sorted(BENCH.glob("*.py"))
    return scripts + sorted((BENCH / "benchkit").glob("*.py"))


def test_the_checker_finds_each_kind_of_breach() -> None:
    bad = """
import sys
sys.path.insert(0, "..")
from tests.processors.harness import make_spans
import tests.infra.kafka
from processor_throughput import workers_run
from benchkit.workers import _private_helper
from tokentrace.core.timeline import _merge
import tokentrace._native
on._inprocess.dropped
getattr(timefmt, "_SECONDS")
from .procfs import cpu_seconds
"""
    found = violations(bad, {"processor_throughput", "benchkit"})
    assert [line.split(":")[0] for line in found] == [str(n) for n in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12)], found
    good = """
from __future__ import annotations
import os
from benchkit.workers import workers_run
from tokentrace.core.timeline import total
class A:
    def f(self):
        return self._x, cls_like.__class__, os.environ["PYTHONPATH"]
"""
    assert violations(good, {"processor_throughput", "benchkit"}) == []


@pytest.mark.parametrize("path", checked_files(), ids=lambda path: str(path.relative_to(BENCH)))
def test_bench_imports_only_public_api_and_benchkit(path: Path) -> None:
    assert violations(path.read_text(), bench_modules()) == []


@pytest.mark.parametrize(
    "script",
    [path for path in checked_files() if path.parent == BENCH],
    ids=lambda path: path.name,
)
def test_each_script_starts_as_a_tool(script: Path, tmp_path: Path) -> None:
    if script.name == "quixstreams_pipeline.py" and importlib.util.find_spec("quixstreams") is None:
        pytest.skip("quixstreams is in the bench extra")
    done = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_the_helpers_import_from_bench() -> None:
    """What a script's ``import benchkit.x`` finds, with bench/ on the path as running a script there puts it,
    and nothing else."""
    modules = [f"benchkit.{path.stem}" for path in sorted((BENCH / "benchkit").glob("[a-z]*.py"))]
    code = "import importlib, sys; [importlib.import_module(name) for name in sys.argv[1:]]"
    done = subprocess.run(
        [sys.executable, "-c", code, *modules], cwd=BENCH, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
