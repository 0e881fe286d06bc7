"""The async clients: awaited calls, ``async for`` streams, the async stream helper, tasks inside steps."""

from __future__ import annotations

import asyncio
import gc
import inspect
from typing import Any

import anthropic
import openai
import pytest

from tests.producers.conftest import RecordingTransport
from tests.producers.instrument import test_anthropic, test_openai
from tests.producers.instrument.conftest import stable
from tests.producers.instrument.fakeapi import FakeProviders
from tokentrace.core.pricing import PriceTable
from tokentrace.producers import Budget, BudgetExceeded, Tracer, current_trace
from tokentrace.producers.instrument import CLOSED_EARLY_ATTRIBUTE, TTFT_ATTRIBUTE, USAGE_MISSING_ATTRIBUTE

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]


async def test_openai_create_and_stream(
    async_oai: openai.AsyncOpenAI, plain_openai: openai.OpenAI, recording: RecordingTransport, prices: PriceTable
) -> None:
    assert inspect.iscoroutinefunction(async_oai.chat.completions.create)
    response = await async_oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert response.to_dict() == plain_openai.chat.completions.create(model="gpt-test", messages=MESSAGES).to_dict()
    stream = await async_oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.AsyncStream)
    chunks = [chunk.to_dict() async for chunk in stream]
    plain = plain_openai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    assert chunks == [chunk.to_dict() for chunk in plain]
    created, streamed = recording.spans
    assert stable(created) == stable(streamed) == test_openai.expected(prices)
    assert TTFT_ATTRIBUTE not in created.attributes
    test_openai.check_timing(streamed, stream=True)


async def test_openai_stream_closed_early(async_oai: openai.AsyncOpenAI, recording: RecordingTransport) -> None:
    async with await async_oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True) as stream:
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                break
        assert recording.spans == []
    [span] = recording.spans
    assert span.attributes[CLOSED_EARLY_ATTRIBUTE] is True and span.attributes[USAGE_MISSING_ATTRIBUTE] is True
    ttft = span.attributes[TTFT_ATTRIBUTE]
    assert isinstance(ttft, float) and span.latency_ms is not None and 50 <= ttft <= span.latency_ms


async def test_openai_errors_and_timeouts(async_oai: openai.AsyncOpenAI, recording: RecordingTransport) -> None:
    with pytest.raises(openai.RateLimitError):
        await async_oai.chat.completions.create(model="fail-429", messages=MESSAGES)
    with pytest.raises(openai.APITimeoutError) as raised:
        await async_oai.chat.completions.create(model="slow", messages=MESSAGES)
    with pytest.raises(openai.APIError):
        async for _ in await async_oai.chat.completions.create(model="fail-midstream", messages=MESSAGES, stream=True):
            pass
    limited, timed_out, midstream = recording.spans
    assert (limited.status, limited.error) == ("error", "RateLimitError: HTTP 429: Rate limit reached for fail-429")
    assert (timed_out.status, timed_out.error) == ("timeout", f"APITimeoutError: {raised.value}")
    assert midstream.status == "error" and midstream.error is not None and midstream.error.startswith("APIError:")


async def test_concurrent_calls_in_tasks_are_children_of_their_own_steps(
    async_oai: openai.AsyncOpenAI, async_claude: anthropic.AsyncAnthropic, recording: RecordingTransport, tracer: Tracer
) -> None:
    async def step(name: str) -> str:
        trace = current_trace()
        assert trace is not None
        async with trace.span(name) as scope:
            if name.startswith("gpt"):
                await async_oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
            else:
                await async_claude.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
            return scope.span_id

    async with tracer.start("fan-out"):
        ids = await asyncio.gather(*(step(f"{kind}-{i}") for kind in ("gpt", "claude") for i in range(3)))
    assert len(recording.spans) == 6
    parents = {span.parent_span_id: span.model for span in recording.spans}
    assert set(parents) == set(ids)
    assert [parents[i] for i in ids] == ["gpt-test-2025-01-01"] * 3 + ["claude-test-20250101"] * 3


async def test_anthropic_create_stream_and_helper(
    async_claude: anthropic.AsyncAnthropic,
    plain_anthropic: anthropic.Anthropic,
    recording: RecordingTransport,
    prices: PriceTable,
) -> None:
    message = await async_claude.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
    assert (
        message.to_dict()
        == plain_anthropic.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES).to_dict()
    )
    stream = await async_claude.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES, stream=True)
    assert isinstance(stream, anthropic.AsyncStream)
    assert len([event async for event in stream]) == 8
    async with async_claude.messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as helper:
        assert isinstance(helper, anthropic.AsyncMessageStream)
        assert [text async for text in helper.text_stream] == ["Hello", " world", "!"]
        assert (await helper.get_final_message()).usage.cache_creation_input_tokens == 2000
    created, streamed, helped = recording.spans
    assert stable(created) == stable(streamed) == test_anthropic.expected(prices)
    assert stable(helped) == test_anthropic.expected(prices, "anthropic.messages.stream")
    test_anthropic.check_stream_timing(streamed.attributes, streamed.latency_ms)
    test_anthropic.check_stream_timing(helped.attributes, helped.latency_ms)


async def test_anthropic_stream_helper_failing_to_start(
    async_claude: anthropic.AsyncAnthropic, recording: RecordingTransport
) -> None:
    with pytest.raises(anthropic.InternalServerError):
        async with async_claude.messages.stream(model="fail-500", max_tokens=64, messages=MESSAGES):
            pass
    [span] = recording.spans
    assert (span.status, span.error) == ("error", "InternalServerError: HTTP 500: Internal server error")


async def test_anthropic_stream_helper_left_early(
    async_claude: anthropic.AsyncAnthropic, recording: RecordingTransport
) -> None:
    async with async_claude.messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as helper:
        async for text in helper.text_stream:
            assert text == "Hello"
            break
    [span] = recording.spans
    assert span.attributes[CLOSED_EARLY_ATTRIBUTE] is True and span.comp_tokens == 1


async def test_a_spent_budget_refuses_the_async_stream_helper_before_its_request(
    async_claude: anthropic.AsyncAnthropic,
    providers: FakeProviders,
    tracer: Tracer,
    recwarn: pytest.WarningsRecorder,
) -> None:
    async with tracer.start("agent", budget=Budget(0.001)):
        await async_claude.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)  # $0.00945
        with pytest.raises(BudgetExceeded):
            async with async_claude.messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES):
                pass
    gc.collect()
    assert len(providers.requests) == 1
    assert not [w for w in recwarn if "never awaited" in str(w.message)]
