"""Where an instrumented client's spans go, and which provider its calls are priced as."""

from __future__ import annotations

import logging
import re
import threading

from ..tracer import Tracer

__all__ = ["default_tracer", "detect_provider"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_default: Tracer | None = None


def default_tracer() -> Tracer:
    """The process-wide tracer for clients instrumented without ``tracer=``: ``Tracer()``, i.e. the SDK's
    defaults (``StdoutTransport``, the bundled price table), created on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = Tracer()
    return _default


def detect_provider(base_url: object, default: str) -> str:
    """The price table's provider id for a client's base URL, e.g. ``groq`` for ``https://api.groq.com/openai/v1``.

    The official endpoints give ``openai``/``anthropic``; a URL no provider claims (a local server, a
    gateway or proxy) gives ``default``, the provider whose API the client speaks.
    """
    url = str(base_url)
    try:
        from genai_prices.data import providers
    except ImportError:  # pragma: no cover - genai-prices is a dependency
        return default
    for provider in providers:
        pattern = getattr(provider, "api_pattern", None)
        if pattern and re.match(pattern, url):
            return str(provider.id)
    return default
