"""A/B runs against other code: the source tree of a git revision (or a directory) as an import path.

``--against REV_OR_DIR`` (``add_against_option``) names a variant; ``variant_source`` exports a revision with
``git archive`` (or takes a directory as it is) and ``link_tree`` makes a directory that, first on
PYTHONPATH, makes ``import tokentrace`` load that tree's Python files, so a child process (a worker, a
measuring child) runs the variant's code on the same data in the same run as the working tree.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

__all__ = ["ROOT", "add_against_option", "export_revision", "link_tree", "variant_source"]

#: The checkout bench/ is in.
ROOT = Path(__file__).resolve().parents[2]


def link_tree(source: Path, into: Path) -> Path:
    """An import path for the source tree ``source``: ``into/tokentrace`` mirrors pyproject's package mapping
    (``tokentrace.processors`` is ``processors/``, and so on) with links. PYTHONPATH entries come before the
    editable install's finder, so ``tokentrace`` then imports from ``source``."""
    package = into / "tokentrace"
    package.mkdir(parents=True)
    roles = ("producers", "processors", "api")
    for entry in (source / "tokentrace").iterdir():
        if entry.name not in roles:
            (package / entry.name).symlink_to(entry)
    for role in roles:
        (package / role).symlink_to(source / role)
    return into


def export_revision(revision: str, into: Path) -> Path:
    """The tree of git revision ``revision`` under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def variant_source(name: str, into: Path) -> Path:
    """The source tree ``--against`` names: a directory as it is, else a git revision exported under ``into``.

    Only Python files come from it: a revision that imports the compiled module (``tokentrace._native``) gets
    the installed one, which the development install's finder supplies; compare compiled code by reinstalling.
    """
    return Path(name).resolve() if Path(name).is_dir() else export_revision(name, into)


def add_against_option(parser: argparse.ArgumentParser) -> None:
    """``--against REV_OR_DIR`` (repeatable), as every A/B benchmark here takes it."""
    parser.add_argument(
        "--against",
        metavar="REV_OR_DIR",
        action="append",
        default=[],
        help="also measure a git revision (or a source tree) beside the working tree; repeatable",
    )
