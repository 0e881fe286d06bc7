"""The real anthropic client, instrumented, against the fake Anthropic server: messages, streams, errors."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.producers.conftest import RecordingTransport
from tests.producers.instrument.conftest import ANTHROPIC_COST, CLIENT_TIMEOUT_S, stable
from tokentrace.core.ingest import CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE
from tokentrace.core.pricing import PriceTable
from tokentrace.producers import Tracer
from tokentrace.producers.instrument import (
    CLOSED_EARLY_ATTRIBUTE,
    METHOD_ATTRIBUTE,
    REQUEST_MODEL_ATTRIBUTE,
    TTFT_ATTRIBUTE,
)

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]
MODEL = "claude-test-20250101"
#: The fake server's usage: 100 uncached input tokens, 3000 read from and 2000 written to the cache.
PROMPT = 100 + 3000 + 2000


def expected(prices: PriceTable, method: str = "anthropic.messages.create", **fields: Any) -> dict[str, Any]:
    span = {
        "parent_span_id": None,
        "name": method,
        "model": MODEL,
        "provider": "anthropic",
        "prompt_tokens": PROMPT,
        "comp_tokens": 50,
        "total_tokens": PROMPT + 50,
        "cost_usd": prices.cost(MODEL, PROMPT, 50, "anthropic", cache_read_tokens=3000, cache_write_tokens=2000),
        "status": "ok",
        "error": None,
        "caller": "test-service",
        "attributes": {
            METHOD_ATTRIBUTE: method,
            REQUEST_MODEL_ATTRIBUTE: "claude-test",
            CACHE_READ_ATTRIBUTE: 3000,
            CACHE_WRITE_ATTRIBUTE: 2000,
        },
    }
    span.update(fields)
    return span


def check_stream_timing(attributes: dict[str, Any], latency_ms: float | None) -> None:
    ttft = attributes[TTFT_ATTRIBUTE]
    assert latency_ms is not None and isinstance(ttft, float)
    assert 50 <= ttft <= latency_ms and latency_ms >= 100  # the server waits 50 ms before the text and the end


def test_a_message_counts_cached_tokens_in_the_prompt(
    claude: anthropic.Anthropic, plain_anthropic: anthropic.Anthropic, recording: RecordingTransport, prices: PriceTable
) -> None:
    message = claude.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
    plain = plain_anthropic.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
    assert type(message) is type(plain) and message.to_dict() == plain.to_dict()
    [span] = recording.spans
    assert stable(span) == expected(prices)
    assert span.cost_usd == pytest.approx(ANTHROPIC_COST, abs=1e-12)
    assert span.latency_ms is not None and span.latency_ms > 0 and TTFT_ATTRIBUTE not in span.attributes


def test_create_with_stream_true(
    claude: anthropic.Anthropic, plain_anthropic: anthropic.Anthropic, recording: RecordingTransport, prices: PriceTable
) -> None:
    stream = claude.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES, stream=True)
    assert isinstance(stream, anthropic.Stream)
    events = [event.to_dict() for event in stream]
    plain = plain_anthropic.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES, stream=True)
    assert events == [event.to_dict() for event in plain]
    [span] = recording.spans
    assert stable(span) == expected(prices)
    check_stream_timing(span.attributes, span.latency_ms)


def test_the_stream_helper_keeps_text_stream_and_final_message(
    claude: anthropic.Anthropic, plain_anthropic: anthropic.Anthropic, recording: RecordingTransport, prices: PriceTable
) -> None:
    def read(client: anthropic.Anthropic) -> tuple[list[str], dict[str, Any]]:
        with client.messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as stream:
            assert isinstance(stream, anthropic.MessageStream)
            return list(stream.text_stream), stream.get_final_message().to_dict()

    texts, final = read(claude)
    assert (texts, final) == read(plain_anthropic)
    assert texts == ["Hello", " world", "!"] and final["usage"]["cache_read_input_tokens"] == 3000
    [span] = recording.spans
    assert stable(span) == expected(prices, "anthropic.messages.stream")
    check_stream_timing(span.attributes, span.latency_ms)


def test_leaving_the_stream_helper_early_records_what_was_reported(
    claude: anthropic.Anthropic, recording: RecordingTransport, prices: PriceTable
) -> None:
    with claude.messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as stream:
        for text in stream.text_stream:
            assert text == "Hello"
            break
        assert recording.spans == []
    [span] = recording.spans
    # message_start reported the input side and 1 output token so far; the final count never came.
    cost = prices.cost(MODEL, PROMPT, 1, "anthropic", cache_read_tokens=3000, cache_write_tokens=2000)
    attributes = {**expected(prices)["attributes"], METHOD_ATTRIBUTE: "anthropic.messages.stream"}
    assert stable(span) == expected(
        prices,
        "anthropic.messages.stream",
        comp_tokens=1,
        total_tokens=PROMPT + 1,
        cost_usd=cost,
        attributes={**attributes, CLOSED_EARLY_ATTRIBUTE: True},
    )


def test_an_entered_stream_helper_that_fails_records_the_error(
    claude: anthropic.Anthropic, recording: RecordingTransport
) -> None:
    with (
        pytest.raises(anthropic.RateLimitError),
        claude.messages.stream(model="fail-429", max_tokens=64, messages=MESSAGES),
    ):
        pass
    [span] = recording.spans
    assert span.status == "error" and span.attributes[METHOD_ATTRIBUTE] == "anthropic.messages.stream"
    assert span.error == "RateLimitError: HTTP 429: Number of request tokens has exceeded your per-minute rate limit"


@pytest.mark.parametrize(
    ("status", "error_type", "text"),
    [
        (
            429,
            anthropic.RateLimitError,
            "RateLimitError: HTTP 429: Number of request tokens has exceeded your per-minute rate limit",
        ),
        (500, anthropic.InternalServerError, "InternalServerError: HTTP 500: Internal server error"),
    ],
)
def test_an_http_error_propagates_unchanged_and_is_an_error_span(
    claude: anthropic.Anthropic,
    plain_anthropic: anthropic.Anthropic,
    recording: RecordingTransport,
    status: int,
    error_type: type[Exception],
    text: str,
) -> None:
    model = f"fail-{status}"
    with pytest.raises(error_type) as caught:
        claude.messages.create(model=model, max_tokens=64, messages=MESSAGES)
    with pytest.raises(error_type) as plain:
        plain_anthropic.messages.create(model=model, max_tokens=64, messages=MESSAGES)
    assert str(caught.value) == str(plain.value)
    [span] = recording.spans
    assert stable(span) == {
        "parent_span_id": None,
        "name": "anthropic.messages.create",
        "model": model,
        "provider": "anthropic",
        "prompt_tokens": 0,
        "comp_tokens": None,
        "total_tokens": 0,
        "cost_usd": None,
        "status": "error",
        "error": text,
        "caller": "test-service",
        "attributes": {METHOD_ATTRIBUTE: "anthropic.messages.create"},
    }


def test_an_error_event_mid_stream_propagates_and_marks_the_span(
    claude: anthropic.Anthropic, recording: RecordingTransport, prices: PriceTable
) -> None:
    texts = []
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        for event in claude.messages.create(model="fail-midstream", max_tokens=64, messages=MESSAGES, stream=True):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
    assert texts == ["Hello"]
    [span] = recording.spans
    assert span.status == "error" and span.error is not None and "Overloaded" in span.error
    assert (span.model, span.prompt_tokens, span.comp_tokens) == ("fail-midstream", PROMPT, 1)  # from message_start


def test_a_client_timeout_is_a_timeout_span(claude: anthropic.Anthropic, recording: RecordingTransport) -> None:
    with pytest.raises(anthropic.APITimeoutError) as raised:
        claude.messages.create(model="slow", max_tokens=64, messages=MESSAGES)
    [span] = recording.spans
    # The exception's type and its own text, whatever wording this anthropic release uses.
    assert (span.status, span.error) == ("timeout", f"APITimeoutError: {raised.value}")
    assert span.latency_ms is not None and span.latency_ms >= CLIENT_TIMEOUT_S * 1000 * 0.9


def test_calls_inside_a_step_are_its_children(
    claude: anthropic.Anthropic, recording: RecordingTransport, tracer: Tracer, prices: PriceTable
) -> None:
    with tracer.start("summarize") as trace, trace.span("draft") as step:
        claude.messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
        with claude.messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as stream:
            stream.until_done()
    created, streamed = recording.spans
    assert stable(created) == expected(prices, name="summarize", parent_span_id=step.span_id)
    assert stable(streamed) == expected(
        prices, "anthropic.messages.stream", name="summarize", parent_span_id=step.span_id
    )
    assert created.trace_id == streamed.trace_id == trace.id
