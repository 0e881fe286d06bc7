"""Record every call of an official OpenAI or Anthropic client as a span, with one line.

    client = tokentrace.instrument(openai.OpenAI())      # or anthropic.Anthropic(), or the Async clients
    client.chat.completions.create(model="gpt-4o", messages=[...])   # one span: tokens, cost, latency

Only that client instance is changed (its methods are wrapped on the instance, never on the class), and
``instrument`` returns the very same object. Each call becomes a span: a child of the current trace and step
when there is one (``with tracer.start(...)``), else a standalone span sent through ``tracer`` (by default a
process-wide ``Tracer()``, i.e. ``StdoutTransport`` and the bundled prices). See ``attributes`` for what
the spans carry besides tokens and cost, and the README for streams, errors and budgets.

``openai`` and ``anthropic`` are optional: nothing here imports them; a client object passed in is
recognised by the package it comes from.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TypeVar

from ..tracer import Tracer
from . import _anthropic, _openai
from ._call import Target
from ._client import instrument_client, is_instrumented, uninstrument_client
from ._target import default_tracer, detect_provider
from .attributes import (
    CLOSED_EARLY_ATTRIBUTE,
    METHOD_ATTRIBUTE,
    REASONING_ATTRIBUTE,
    REQUEST_MODEL_ATTRIBUTE,
    TTFT_ATTRIBUTE,
    USAGE_MISSING_ATTRIBUTE,
)

__all__ = [
    "CLOSED_EARLY_ATTRIBUTE",
    "METHOD_ATTRIBUTE",
    "REASONING_ATTRIBUTE",
    "REQUEST_MODEL_ATTRIBUTE",
    "TTFT_ATTRIBUTE",
    "USAGE_MISSING_ATTRIBUTE",
    "default_tracer",
    "instrument",
    "instrument_anthropic",
    "instrument_openai",
    "instrumented",
    "uninstrument",
]

C = TypeVar("C")


def _module(name: str) -> ModuleType | None:
    """The client package if it is imported (it is whenever one of its clients exists)."""
    return sys.modules.get(name)


def _kind(client: object) -> str | None:
    openai = _module("openai")
    if openai is not None and isinstance(client, openai.OpenAI | openai.AsyncOpenAI):
        return "openai"
    anthropic = _module("anthropic")
    if anthropic is not None and isinstance(client, anthropic.Anthropic | anthropic.AsyncAnthropic):
        return "anthropic"
    return None


def instrument(client: C, *, tracer: Tracer | None = None, provider: str | None = None, stream_usage: bool = True) -> C:
    """Record every call of ``client`` (an ``openai.OpenAI``/``AsyncOpenAI`` or an ``anthropic.Anthropic``/
    ``AsyncAnthropic``) as a span; returns ``client`` itself. Calling it again re-instruments with the new
    arguments. See ``instrument_openai`` and ``instrument_anthropic``; raises TypeError for another object.
    """
    kind = _kind(client)
    if kind == "openai":
        return instrument_openai(client, tracer=tracer, provider=provider, stream_usage=stream_usage)
    if kind == "anthropic":
        return instrument_anthropic(client, tracer=tracer, provider=provider)
    raise TypeError(
        "instrument() takes an openai.OpenAI/AsyncOpenAI or anthropic.Anthropic/AsyncAnthropic client, "
        f"got {type(client).__qualname__}"
    )


def instrument_openai(
    client: C, *, tracer: Tracer | None = None, provider: str | None = None, stream_usage: bool = True
) -> C:
    """Record ``chat.completions.create``/``parse`` (and so ``.stream()``), ``completions.create`` and
    ``responses.create``/``parse`` of an ``openai.OpenAI`` or ``AsyncOpenAI`` (Azure's too).

    ``provider`` defaults to the price table's provider for the client's ``base_url`` (``openai``,
    ``azure``, ``groq``, ``openrouter``, ...), or ``openai`` when no provider claims it (a local server or
    a proxy). ``stream_usage``: for ``stream=True`` calls that do not set ``stream_options.include_usage``,
    ask for it so the span gets token counts, and keep the extra usage-only chunk from the caller. Pass
    ``False`` for a server that rejects ``stream_options``; such streams are recorded without usage.
    """
    openai = _module("openai")
    if openai is None or not isinstance(client, openai.OpenAI | openai.AsyncOpenAI):
        raise TypeError(f"instrument_openai() takes an openai.OpenAI or AsyncOpenAI, got {type(client).__qualname__}")
    target = Target(
        tracer if tracer is not None else default_tracer(),
        provider or detect_provider(client.base_url, "openai"),
        (openai.APITimeoutError,),
        stream_usage,
    )
    instrument_client(client, _openai.ENTRIES, target, isinstance(client, openai.AsyncOpenAI))
    return client


def instrument_anthropic(client: C, *, tracer: Tracer | None = None, provider: str | None = None) -> C:
    """Record ``messages.create`` (also with ``stream=True``), ``messages.parse`` and ``messages.stream()``
    of an ``anthropic.Anthropic`` or ``AsyncAnthropic``. ``provider``: as for ``instrument_openai``
    (``anthropic`` unless the ``base_url`` belongs to another provider in the price table)."""
    anthropic = _module("anthropic")
    if anthropic is None or not isinstance(client, anthropic.Anthropic | anthropic.AsyncAnthropic):
        raise TypeError(
            f"instrument_anthropic() takes an anthropic.Anthropic or AsyncAnthropic, got {type(client).__qualname__}"
        )
    target = Target(
        tracer if tracer is not None else default_tracer(),
        provider or detect_provider(client.base_url, "anthropic"),
        (anthropic.APITimeoutError,),
    )
    instrument_client(client, _anthropic.ENTRIES, target, isinstance(client, anthropic.AsyncAnthropic))
    return client


def uninstrument(client: object) -> bool:
    """Put ``client``'s own methods back; returns False when it was not instrumented."""
    kind = _kind(client)
    if kind is None:
        return False
    return uninstrument_client(client, _openai.ENTRIES if kind == "openai" else _anthropic.ENTRIES)


def instrumented(client: object) -> bool:
    """Whether ``client``'s calls are being recorded."""
    kind = _kind(client)
    if kind is None:
        return False
    return is_instrumented(client, _openai.ENTRIES if kind == "openai" else _anthropic.ENTRIES)
