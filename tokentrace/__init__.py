"""tokentrace: token-level observability for LLM inference.

``tokentrace.instrument(client)`` records every call of an official OpenAI or Anthropic client as a span
(``tokentrace.producers.instrument``); the rest of the SDK is ``tokentrace.producers``. These names are
imported on first use, so ``import tokentrace.core...`` in the server stays free of the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokentrace.producers.instrument import instrument, instrument_anthropic, instrument_openai, uninstrument

__all__ = ["instrument", "instrument_anthropic", "instrument_openai", "uninstrument"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import tokentrace.producers.instrument as instrumentation

        return getattr(instrumentation, name)
    raise AttributeError(f"module 'tokentrace' has no attribute {name!r}")
