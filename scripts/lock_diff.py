"""Print how the running environment differs from a lock file (``scripts/venv latest`` uses it).

Usage: ``python scripts/lock_diff.py requirements/dev.txt``. Lock entries whose environment marker does not
apply here (``colorama ; sys_platform == 'win32'``) are left out; the project itself and pip are not compared.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.markers import Marker
from packaging.utils import canonicalize_name


def locked_versions(path: str) -> dict[str, str]:
    versions: dict[str, str] = {}
    with open(path) as lock:
        for line in lock:
            if not line[:1].isalnum():
                continue  # comments, hashes, "# via" lines
            pin, _, marker = line.split(" \\")[0].partition(";")
            if marker.strip() and not Marker(marker.strip()).evaluate():
                continue
            name, _, version = pin.strip().partition("==")
            versions[str(canonicalize_name(name))] = version
    return versions


def installed_versions() -> dict[str, str]:
    found = {str(canonicalize_name(d.metadata["Name"])): d.version for d in metadata.distributions()}
    for skipped in ("tokentrace", "pip"):
        found.pop(skipped, None)
    return found


def main(path: str) -> None:
    locked, installed = locked_versions(path), installed_versions()
    changed = [
        f"  {name}: {locked.get(name, '-')} -> {installed.get(name, '-')}"
        for name in sorted(locked.keys() | installed.keys())
        if locked.get(name) != installed.get(name)
    ]
    print("\n".join(changed) or "  nothing: the lock is up to date")


if __name__ == "__main__":
    main(sys.argv[1])
