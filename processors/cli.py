"""Deprecated: the ``worker`` and ``api`` commands live in ``tokentrace.cli`` (one ``tokentrace`` app).

This module only keeps the old names working: ``worker_settings`` (now ``WorkerSettings.from_config``),
``worker``, ``api`` and ``cli`` (now the ``tokentrace`` app itself), and ``python -m tokentrace.processors.cli
worker|api``. The command names are looked up when first used, so importing the processors never imports the
command line (which brings in ``tokentrace.api``) and registers nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokentrace.config import Config
    from tokentrace.processors.worker import WorkerSettings

__all__ = ["api", "cli", "worker", "worker_settings"]  # noqa: F822 (api, cli, worker: module __getattr__)

#: Old name -> (module, name) where it lives now.
_MOVED = {
    "api": ("tokentrace.cli.distributed", "api"),
    "worker": ("tokentrace.cli.distributed", "worker"),
    "cli": ("tokentrace.cli", "app"),
}


def worker_settings(config: Config, prefix: str | None = None) -> WorkerSettings:
    """The worker's settings from a configuration (``WorkerSettings.from_config``)."""
    from tokentrace.processors.worker import WorkerSettings

    return WorkerSettings.from_config(config, prefix)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module, attribute = _MOVED[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    importlib.import_module("tokentrace.cli").main()
