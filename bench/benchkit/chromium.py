"""Debian's headless chromium, launched one way for bench/console.py and the console tests (tests/api/console).

Playwright drives it (``playwright.sync_api`` or ``async_api``: ``launch`` takes either's ``chromium``); the
browser is the system's (``/usr/bin/chromium``), never one Playwright downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM", "launch"]

CHROMIUM = "/usr/bin/chromium"
#: Headless without a sandbox (containers have none to give), and nothing that reaches the network on its own
#: (updates, sync, QUIC): the console must work from the server alone.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(playwright: Any, profile: Path, **options: Any) -> Any:
    """A persistent browser context (Playwright's ``BrowserContext``) with its profile in ``profile``."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, **options
    )
