"""instrument()/uninstrument(): what changes (one instance), what is kept (signatures, objects), what it
costs when it goes wrong (nothing for the caller), zero-config output, provider detection, optional imports."""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
from typing import Any

import anthropic
import openai
import pytest

import tokentrace
from tests.producers.conftest import RecordingTransport
from tests.producers.instrument.conftest import anthropic_options, openai_options
from tests.producers.instrument.fakeapi import FakeProviders
from tokentrace.core.pricing import PriceTable, default_table
from tokentrace.producers import Tracer
from tokentrace.producers.instrument import (
    USAGE_MISSING_ATTRIBUTE,
    _patch,
    instrument,
    instrument_anthropic,
    instrument_openai,
    instrumented,
    uninstrument,
)
from tokentrace.producers.instrument._call import Call, Target
from tokentrace.producers.instrument._stream import watch_sync
from tokentrace.producers.instrument._target import detect_provider

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]


def chat(client: openai.OpenAI, model: str = "gpt-test") -> Any:
    return client.chat.completions.create(model=model, messages=MESSAGES)


def test_only_the_instrumented_instance_changes(
    providers: FakeProviders, tracer: Tracer, recording: RecordingTransport
) -> None:
    with openai.OpenAI(**openai_options(providers)) as one, openai.OpenAI(**openai_options(providers)) as other:
        assert instrument(one, tracer=tracer) is one
        chat(one)
        chat(other)
        assert len(recording.spans) == 1
        assert "create" in vars(one.chat.completions) and "create" not in vars(other.chat.completions)
        assert "create" in vars(type(other.chat.completions))  # the class keeps its own method
        assert instrumented(one) and not instrumented(other)


def test_wrapped_methods_keep_their_signatures(
    oai: openai.OpenAI,
    claude: anthropic.Anthropic,
    async_oai: openai.AsyncOpenAI,
    async_claude: anthropic.AsyncAnthropic,
) -> None:
    sync = [oai.chat.completions.create, oai.chat.completions.parse, oai.completions.create, oai.responses.create]
    sync += [claude.messages.create, claude.messages.stream, async_claude.messages.stream]
    awaited = [async_oai.chat.completions.create, async_oai.responses.create, async_claude.messages.create]
    for wrapped in sync + awaited:
        assert not inspect.ismethod(wrapped)  # our function, set on the instance
        original = wrapped.__wrapped__  # type: ignore[attr-defined]
        assert inspect.ismethod(original) and original.__func__ is type(original.__self__).__dict__[wrapped.__name__]
        assert inspect.signature(wrapped) == inspect.signature(original)
        assert wrapped.__doc__ == original.__doc__ and wrapped.__qualname__ == original.__qualname__
    assert not any(inspect.iscoroutinefunction(f) for f in sync)  # messages.stream returns a manager, as the SDK's
    assert all(inspect.iscoroutinefunction(f) for f in awaited)


def test_other_objects_are_refused(plain_openai: openai.OpenAI, plain_anthropic: anthropic.Anthropic) -> None:
    with pytest.raises(TypeError, match="got object"):
        instrument(object())
    with pytest.raises(TypeError, match="got Anthropic"):
        instrument_openai(plain_anthropic)
    with pytest.raises(TypeError, match="got OpenAI"):
        instrument_anthropic(plain_openai)
    assert not uninstrument(object()) and not instrumented(object())


def test_uninstrument_puts_the_methods_back(
    providers: FakeProviders, tracer: Tracer, recording: RecordingTransport
) -> None:
    with anthropic.Anthropic(**anthropic_options(providers)) as client:
        instrument(client, tracer=tracer)
        assert instrumented(client) and uninstrument(client)
        assert not instrumented(client) and not uninstrument(client)
        assert "create" not in vars(client.messages) and "stream" not in vars(client.messages)
        assert "with_options" not in vars(client)
        client.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
        with client.messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as stream:
            stream.until_done()
    assert recording.spans == []


def test_instrumenting_again_replaces_the_tracer_without_stacking(
    oai: openai.OpenAI, recording: RecordingTransport, prices: PriceTable
) -> None:
    second = RecordingTransport()
    instrument(oai, tracer=Tracer(transport=second, prices=prices))
    chat(oai)
    assert recording.spans == [] and len(second.spans) == 1


def test_copies_of_an_instrumented_client_are_instrumented(oai: openai.OpenAI, recording: RecordingTransport) -> None:
    chat(oai.with_options(timeout=5.0))
    chat(oai.copy(max_retries=0))
    assert len(recording.spans) == 2


def test_raw_and_streaming_responses_are_not_recorded(oai: openai.OpenAI, recording: RecordingTransport) -> None:
    with oai.chat.completions.with_streaming_response.create(model="gpt-test", messages=MESSAGES) as response:
        assert json.loads(response.read())["model"] == "gpt-test-2025-01-01"
    assert recording.spans == []


@pytest.mark.parametrize(
    ("url", "default", "provider"),
    [
        (str(openai.OpenAI(api_key="sk-test").base_url), "openai", "openai"),
        (str(anthropic.Anthropic(api_key="sk-test").base_url), "anthropic", "anthropic"),
        ("https://api.groq.com/openai/v1", "openai", "groq"),
        ("https://openrouter.ai/api/v1", "openai", "openrouter"),
        ("https://my-resource.openai.azure.com/openai/deployments/gpt-4o", "openai", "azure"),
        ("https://api.deepseek.com/v1", "openai", "deepseek"),
        ("http://127.0.0.1:8000/v1", "openai", "openai"),  # a local server or proxy speaks the default API
        ("http://litellm.internal:4000", "anthropic", "anthropic"),
    ],
)
def test_the_provider_comes_from_the_base_url(url: str, default: str, provider: str) -> None:
    assert detect_provider(url, default) == provider


def test_an_explicit_provider_wins(providers: FakeProviders, tracer: Tracer, recording: RecordingTransport) -> None:
    with openai.OpenAI(**openai_options(providers)) as client:
        chat(instrument(client, tracer=tracer, provider="azure"))
    [span] = recording.spans
    assert span.provider == "azure" and span.cost_usd is not None


def test_zero_config_writes_spans_to_stdout_priced_from_the_bundled_table(
    providers: FakeProviders, capsys: pytest.CaptureFixture[str]
) -> None:
    with openai.OpenAI(**openai_options(providers)) as client:
        chat(tokentrace.instrument(client), model="gpt-4o-mini")
    [line] = capsys.readouterr().out.splitlines()
    span = json.loads(line)
    assert (span["name"], span["model"], span["provider"]) == (
        "openai.chat.completions.create",
        "gpt-4o-mini",
        "openai",
    )
    assert (span["prompt_tokens"], span["comp_tokens"], span["total_tokens"]) == (1200, 300, 1500)
    oracle = default_table().cost("gpt-4o-mini", 1200, 300, "openai", cache_read_tokens=1024)
    assert oracle is not None and span["cost_usd"] == oracle


def test_the_top_level_names() -> None:
    assert tokentrace.instrument is instrument and tokentrace.uninstrument is uninstrument
    assert tokentrace.instrument_openai is instrument_openai and tokentrace.instrument_anthropic is instrument_anthropic
    with pytest.raises(AttributeError):
        _ = tokentrace.no_such_name  # type: ignore[attr-defined]


def test_importing_tokentrace_imports_neither_client_package() -> None:
    script = (
        "import sys, tokentrace, tokentrace.producers, tokentrace.producers.instrument\n"
        "tokentrace.instrument\n"
        "assert 'openai' not in sys.modules and 'anthropic' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


class ExplodingPrices(PriceTable):
    def cost(self, *args: Any, **kwargs: Any) -> float | None:
        raise RuntimeError("price table on fire")


def test_a_failure_while_recording_never_reaches_the_caller(
    providers: FakeProviders, caplog: pytest.LogCaptureFixture
) -> None:
    recording = RecordingTransport()
    tracer = Tracer(transport=recording, prices=ExplodingPrices(use_library=False))
    with openai.OpenAI(**openai_options(providers)) as client:
        instrument(client, tracer=tracer)
        with caplog.at_level(logging.ERROR):
            assert chat(client).choices[0].message.content == "Hello world!"
            chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert len(chunks) == 5 and recording.spans == []
    assert caplog.text.count("could not record openai.chat.completions.create call") == 2
    assert "price table on fire" in caplog.text


def test_a_failure_before_the_call_runs_it_unrecorded(
    oai: openai.OpenAI, recording: RecordingTransport, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Call:
        raise RuntimeError("no clock")

    monkeypatch.setattr(_patch, "Call", broken)
    with caplog.at_level(logging.ERROR):
        assert chat(oai).choices[0].message.content == "Hello world!"
    assert recording.spans == [] and "runs unrecorded" in caplog.text


def test_a_stream_of_an_unknown_shape_is_recorded_at_once_without_usage(
    tracer: Tracer, recording: RecordingTransport, caplog: pytest.LogCaptureFixture
) -> None:
    class OddStream:
        def __iter__(self) -> Any:
            return iter([1, 2])

    call = Call(Target(tracer, "openai"), "openai.chat.completions.create", "gpt-test")
    stream = OddStream()
    with caplog.at_level(logging.WARNING):
        assert watch_sync(stream, call, lambda call, item: True) is stream
    assert list(stream) == [1, 2] and "OddStream objects; openai.chat.completions.create streams" in caplog.text
    [span] = recording.spans
    assert span.model == "gpt-test" and span.attributes[USAGE_MISSING_ATTRIBUTE] is True
