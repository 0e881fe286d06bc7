"""What every command shares: ``--config``, ``--verbose``, logging, and settings with one-line errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from tokentrace.config import Config, ConfigError, load_settings

__all__ = ["DEMO_RATE", "ConfigOption", "VerboseOption", "fail", "settings", "setup_logging"]

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="tokentrace.yml to read.", dir_okay=False)]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr and exit (2: bad input, 1: could not run)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings(config_path: Path | None, flags: Mapping[str, tuple[str, object]] | None = None) -> Config:
    """The command's settings (``tokentrace.config.load_settings``: file, ``TOKENTRACE_*``, then ``flags``,
    ``section.key`` -> (flag, value or None)); a bad one exits 2 naming it."""
    try:
        return load_settings(config_path, flags)
    except ConfigError as exc:
        fail(str(exc))


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


#: Demo spans per second, unless ``--demo-rate`` / ``--rate`` says otherwise (serve, demo, dev-cluster).
DEMO_RATE = 20.0
