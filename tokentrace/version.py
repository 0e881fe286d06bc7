"""The package version, owned by ``pyproject.toml``: read from the installed distribution's metadata.

A source checkout that was never installed (``PYTHONPATH=.``) has no metadata; it reads the version from the
``pyproject.toml`` next to the package, and only without that too reports ``0+unknown``.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["__version__", "package_version"]


def package_version() -> str:
    """``tokentrace``'s version: installed metadata, else the checkout's ``pyproject.toml``, else ``0+unknown``."""
    try:
        return version("tokentrace")
    except PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError):
        return "0+unknown"
    found = project.get("version")
    return found if isinstance(found, str) else "0+unknown"


__version__ = package_version()
