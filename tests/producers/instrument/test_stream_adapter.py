"""The openai and anthropic stream internals that tokentrace.producers.instrument._stream observes.

Both clients' ``Stream``/``AsyncStream`` read their items from a private ``_iterator`` and release the connection
with ``close()``. A failure here means an upgrade of the named library changed that shape: its streams would be
recorded without usage (a warning at run time), so this test names the library and version first.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from tokentrace.core.compat import installed_version

from .conftest import anthropic_options, openai_options

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]


def assert_observable(stream: Any, distribution: str, *, asynchronous: bool) -> None:
    where = f"{distribution} {installed_version(distribution)}: {type(stream).__qualname__}"
    step = "__anext__" if asynchronous else "__next__"
    assert hasattr(getattr(stream, "_iterator", None), step), f"{where} has no _iterator with {step}"
    assert callable(getattr(type(stream), "close", None)), f"{where} has no close()"


def test_an_openai_stream_has_the_iterator_tokentrace_observes(plain_openai: openai.OpenAI) -> None:
    stream = plain_openai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert_observable(stream, "openai", asynchronous=False)
    stream.close()


def test_an_anthropic_stream_has_the_iterator_tokentrace_observes(plain_anthropic: anthropic.Anthropic) -> None:
    stream = plain_anthropic.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES, stream=True)
    assert_observable(stream, "anthropic", asynchronous=False)
    stream.close()


async def test_async_streams_have_the_iterator_tokentrace_observes(providers: Any) -> None:
    async with openai.AsyncOpenAI(**openai_options(providers)) as oai:
        stream = await oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        assert_observable(stream, "openai", asynchronous=True)
        await stream.close()
    async with anthropic.AsyncAnthropic(**anthropic_options(providers)) as claude:
        astream = await claude.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES, stream=True)
        assert_observable(astream, "anthropic", asynchronous=True)
        await astream.close()
