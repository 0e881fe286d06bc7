"""The real openai client, instrumented, against the fake OpenAI server: responses, streams, errors, traces."""

from __future__ import annotations

import gc
from typing import Any

import openai
import pytest

from tests.producers.conftest import RecordingTransport
from tests.producers.instrument.conftest import CLIENT_TIMEOUT_S, OPENAI_COST, stable
from tests.producers.instrument.fakeapi import FakeProviders
from tokentrace.core.ingest import CACHE_READ_ATTRIBUTE
from tokentrace.core.pricing import PriceTable
from tokentrace.core.span import Span
from tokentrace.core.timefmt import parse_rfc3339_ms
from tokentrace.producers import Budget, BudgetExceeded, Tracer
from tokentrace.producers.instrument import (
    CLOSED_EARLY_ATTRIBUTE,
    METHOD_ATTRIBUTE,
    REASONING_ATTRIBUTE,
    REQUEST_MODEL_ATTRIBUTE,
    TTFT_ATTRIBUTE,
    USAGE_MISSING_ATTRIBUTE,
    instrument,
)

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]
MODEL = "gpt-test-2025-01-01"


def expected(prices: PriceTable, method: str = "openai.chat.completions.create", **fields: Any) -> dict[str, Any]:
    """The stable fields of the span of one successful call to the fake server (usage with cache and reasoning)."""
    span = {
        "parent_span_id": None,
        "name": method,
        "model": MODEL,
        "provider": "openai",
        "prompt_tokens": 1200,
        "comp_tokens": 300,
        "total_tokens": 1500,
        "cost_usd": prices.cost(MODEL, 1200, 300, "openai", cache_read_tokens=1024),
        "status": "ok",
        "error": None,
        "caller": "test-service",
        "attributes": {
            METHOD_ATTRIBUTE: method,
            REQUEST_MODEL_ATTRIBUTE: "gpt-test",
            REASONING_ATTRIBUTE: 128,
            CACHE_READ_ATTRIBUTE: 1024,
        },
    }
    span.update(fields)
    return span


def without_usage(
    method: str = "openai.chat.completions.create", model: str = MODEL, **attributes: Any
) -> dict[str, Any]:
    """A successful stream whose usage never arrived: no counts, no cost, flagged."""
    attrs: dict[str, Any] = {METHOD_ATTRIBUTE: method, USAGE_MISSING_ATTRIBUTE: True}
    if model != "no-usage":
        attrs[REQUEST_MODEL_ATTRIBUTE] = "gpt-test"
    attrs.update(attributes)
    return {
        "parent_span_id": None,
        "name": method,
        "model": model,
        "provider": "openai",
        "prompt_tokens": None,
        "comp_tokens": None,
        "total_tokens": 0,
        "cost_usd": None,
        "status": "ok",
        "error": None,
        "caller": "test-service",
        "attributes": attrs,
    }


def check_timing(span: Span, *, stream: bool) -> None:
    assert span.latency_ms is not None and span.latency_ms > 0
    assert span.started_at is not None and span.ended_at is not None
    assert 0 <= parse_rfc3339_ms(span.ended_at) - parse_rfc3339_ms(span.started_at) <= span.latency_ms + 2
    ttft = span.attributes.get(TTFT_ATTRIBUTE)
    if not stream:
        assert ttft is None
        return
    # The server waits 50 ms between the role-only chunk and the first text, and 50 ms before the end.
    assert isinstance(ttft, float) and 50 <= ttft <= span.latency_ms
    assert span.latency_ms >= 100


def test_a_chat_completion_is_one_span_with_cached_and_reasoning_tokens(
    oai: openai.OpenAI, plain_openai: openai.OpenAI, recording: RecordingTransport, prices: PriceTable
) -> None:
    response = oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
    plain = plain_openai.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert type(response) is type(plain) and response.to_dict() == plain.to_dict()
    [span] = recording.spans
    assert stable(span) == expected(prices)
    assert span.cost_usd == pytest.approx(OPENAI_COST, abs=1e-12)
    check_timing(span, stream=False)


def test_a_stream_asks_for_usage_and_keeps_the_usage_chunk_from_the_caller(
    oai: openai.OpenAI,
    plain_openai: openai.OpenAI,
    providers: FakeProviders,
    recording: RecordingTransport,
    prices: PriceTable,
) -> None:
    stream = oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.Stream)
    chunks = [chunk.to_dict() for chunk in stream]
    plain = [
        chunk.to_dict()
        for chunk in plain_openai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    ]
    assert chunks == plain  # no extra usage-only chunk, no "usage": null keys
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hello", " world", "!", None]
    sent = [body for path, body in providers.requests]
    assert sent[0]["stream_options"] == {"include_usage": True} and "stream_options" not in sent[1]
    [span] = recording.spans
    assert stable(span) == expected(prices)
    check_timing(span, stream=True)


def test_a_stream_whose_caller_asked_for_usage_yields_the_usage_chunk(
    oai: openai.OpenAI, providers: FakeProviders, recording: RecordingTransport, prices: PriceTable
) -> None:
    options = {"include_usage": True}
    chunks = list(oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True, stream_options=options))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1200
    assert providers.requests[0][1]["stream_options"] == options
    [span] = recording.spans
    assert stable(span) == expected(prices)


def test_a_stream_whose_caller_declined_usage_is_recorded_without_counts(
    oai: openai.OpenAI, providers: FakeProviders, recording: RecordingTransport
) -> None:
    options = {"include_usage": False}
    list(oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True, stream_options=options))
    assert providers.requests[0][1]["stream_options"] == options
    [span] = recording.spans
    assert stable(span) == without_usage()
    check_timing(span, stream=True)


def test_a_server_that_sends_no_usage_chunk_gives_no_counts_and_no_cost(
    oai: openai.OpenAI, recording: RecordingTransport
) -> None:
    chunks = list(oai.chat.completions.create(model="no-usage", messages=MESSAGES, stream=True))
    assert len(chunks) == 5
    [span] = recording.spans
    assert stable(span) == without_usage(model="no-usage")


def test_stream_usage_false_leaves_the_request_alone(
    providers: FakeProviders, recording: RecordingTransport, tracer: Tracer
) -> None:
    with openai.OpenAI(base_url=providers.openai_url, api_key="sk-test", max_retries=0) as client:
        instrument(client, tracer=tracer, stream_usage=False)
        list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert "stream_options" not in providers.requests[0][1]
    [span] = recording.spans
    assert stable(span) == without_usage()


def test_a_stream_closed_early_is_recorded_as_closed(oai: openai.OpenAI, recording: RecordingTransport) -> None:
    stream = oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    first, second = next(stream), next(stream)
    assert (first.choices[0].delta.content, second.choices[0].delta.content) == ("", "Hello")
    assert recording.spans == []  # still open
    stream.close()
    [span] = recording.spans
    assert stable(span) == without_usage(**{CLOSED_EARLY_ATTRIBUTE: True})
    ttft = span.attributes[TTFT_ATTRIBUTE]
    assert isinstance(ttft, float) and span.latency_ms is not None and 50 <= ttft <= span.latency_ms
    stream.close()  # closing again records nothing more
    assert len(recording.spans) == 1


def test_leaving_a_with_block_early_records_the_stream(oai: openai.OpenAI, recording: RecordingTransport) -> None:
    with oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True) as stream:
        for chunk in stream:
            if chunk.choices[0].delta.content:
                break
    [span] = recording.spans
    assert span.attributes[CLOSED_EARLY_ATTRIBUTE] is True and span.attributes[USAGE_MISSING_ATTRIBUTE] is True


def test_an_abandoned_stream_is_recorded_when_collected(oai: openai.OpenAI, recording: RecordingTransport) -> None:
    stream = oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    next(stream)
    del stream
    gc.collect()
    [span] = recording.spans
    assert stable(span) == without_usage(**{CLOSED_EARLY_ATTRIBUTE: True})
    assert TTFT_ATTRIBUTE not in span.attributes  # only the role chunk was read


def test_a_stream_never_iterated_is_recorded_when_collected(oai: openai.OpenAI, recording: RecordingTransport) -> None:
    oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    gc.collect()
    [span] = recording.spans
    assert span.attributes[CLOSED_EARLY_ATTRIBUTE] is True


def test_an_error_mid_stream_propagates_and_marks_the_span(
    oai: openai.OpenAI, plain_openai: openai.OpenAI, recording: RecordingTransport
) -> None:
    def read(client: openai.OpenAI) -> BaseException:
        seen = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in client.chat.completions.create(model="fail-midstream", messages=MESSAGES, stream=True):
                seen.append(chunk)
        assert len(seen) == 2  # the role chunk and "Hello"
        return caught.value

    error, plain = read(oai), read(plain_openai)
    assert type(error) is type(plain) and str(error) == str(plain)
    [span] = recording.spans
    assert span.status == "error"
    assert span.error == "APIError: The server had an error while processing your request."
    assert (span.prompt_tokens, span.comp_tokens, span.total_tokens, span.cost_usd) == (0, None, 0, None)
    assert CLOSED_EARLY_ATTRIBUTE not in span.attributes and TTFT_ATTRIBUTE in span.attributes


@pytest.mark.parametrize(
    ("status", "error_type", "text"),
    [
        (429, openai.RateLimitError, "RateLimitError: HTTP 429: Rate limit reached for fail-429"),
        (500, openai.InternalServerError, "InternalServerError: HTTP 500: The server had an error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_http_error_propagates_unchanged_and_is_an_error_span(
    oai: openai.OpenAI,
    plain_openai: openai.OpenAI,
    recording: RecordingTransport,
    status: int,
    error_type: type[Exception],
    text: str,
    stream: bool,
) -> None:
    model = f"fail-{status}"
    with pytest.raises(error_type) as caught:
        oai.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
    with pytest.raises(error_type) as plain:
        plain_openai.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
    assert str(caught.value) == str(plain.value) and caught.value.status_code == status  # type: ignore[attr-defined]
    [span] = recording.spans
    assert stable(span) == {
        "parent_span_id": None,
        "name": "openai.chat.completions.create",
        "model": model,
        "provider": "openai",
        "prompt_tokens": 0,
        "comp_tokens": None,
        "total_tokens": 0,
        "cost_usd": None,  # the test price table does not know the model "fail-429"
        "status": "error",
        "error": text,
        "caller": "test-service",
        "attributes": {METHOD_ATTRIBUTE: "openai.chat.completions.create"},
    }


def test_a_client_timeout_is_a_timeout_span(oai: openai.OpenAI, recording: RecordingTransport) -> None:
    with pytest.raises(openai.APITimeoutError) as raised:
        oai.chat.completions.create(model="slow", messages=MESSAGES)
    [span] = recording.spans
    # The exception's type and its own text, whatever wording this openai release uses.
    assert (span.status, span.error) == ("timeout", f"APITimeoutError: {raised.value}")
    assert span.latency_ms is not None and span.latency_ms >= CLIENT_TIMEOUT_S * 1000 * 0.9


def test_calls_inside_a_trace_are_its_spans_under_the_current_step(
    oai: openai.OpenAI, recording: RecordingTransport, tracer: Tracer, prices: PriceTable
) -> None:
    with tracer.start("agent", attributes={"workflow": "demo"}) as trace:
        oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
        with trace.span("plan") as step:
            oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
            stream = oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        list(stream)  # read after the step ended: still the step's child
        assert recording.spans == []  # buffered until the trace ends
    direct, in_step, streamed = recording.spans
    attributes = {"workflow": "demo", **expected(prices)["attributes"]}
    assert stable(direct) == expected(prices, name="agent", attributes=attributes)
    assert stable(in_step) == expected(prices, name="agent", attributes=attributes, parent_span_id=step.span_id)
    assert stable(streamed) == stable(in_step)
    assert {s.trace_id for s in recording.spans} == {trace.id}
    assert len({s.span_id for s in recording.spans}) == 3


def test_legacy_completions_are_recorded(oai: openai.OpenAI, recording: RecordingTransport, prices: PriceTable) -> None:
    response = oai.completions.create(model="gpt-test", prompt="Say hello")
    texts = [
        chunk.choices[0].text for chunk in oai.completions.create(model="gpt-test", prompt="Say hello", stream=True)
    ]
    assert response.choices[0].text == "Hello world!" and texts == ["Hello", " world", "!", ""]
    plain, streamed = recording.spans
    method = "openai.completions.create"
    assert stable(plain) == stable(streamed) == expected(prices, method)
    check_timing(plain, stream=False)
    check_timing(streamed, stream=True)


def test_responses_are_recorded(oai: openai.OpenAI, recording: RecordingTransport, prices: PriceTable) -> None:
    response = oai.responses.create(model="gpt-test", input="Say hello")
    events = [event.type for event in oai.responses.create(model="gpt-test", input="Say hello", stream=True)]
    assert response.output_text == "Hello world!"
    assert events[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert events[4:7] == ["response.output_text.delta"] * 3 and events[-1] == "response.completed"
    plain, streamed = recording.spans
    method = "openai.responses.create"
    assert stable(plain) == stable(streamed) == expected(prices, method)
    check_timing(plain, stream=False)
    check_timing(streamed, stream=True)


def test_the_stream_helpers_are_recorded_once_through_create(
    oai: openai.OpenAI, plain_openai: openai.OpenAI, recording: RecordingTransport, prices: PriceTable
) -> None:
    def final(client: openai.OpenAI) -> dict[str, Any]:
        with client.chat.completions.stream(model="gpt-test", messages=MESSAGES) as stream:
            assert "".join(e.delta for e in stream if e.type == "content.delta") == "Hello world!"
            return stream.get_final_completion().to_dict()

    assert final(oai) == final(plain_openai)
    with oai.responses.stream(model="gpt-test", input="Say hello") as events:
        assert events.get_final_response().output_text == "Hello world!"
    chat, responses = recording.spans
    assert stable(chat) == expected(prices)
    assert stable(responses) == expected(prices, "openai.responses.create")
    check_timing(chat, stream=True)


def test_parse_is_recorded(oai: openai.OpenAI, recording: RecordingTransport, prices: PriceTable) -> None:
    completion = oai.chat.completions.parse(model="gpt-test", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello world!"
    [span] = recording.spans
    assert stable(span) == expected(prices, "openai.chat.completions.parse")


def test_a_spent_budget_refuses_the_next_call_before_it_is_made(
    oai: openai.OpenAI, providers: FakeProviders, recording: RecordingTransport, tracer: Tracer
) -> None:
    budget = Budget(0.006)  # fits one call ($0.00472), not two
    with tracer.start("agent", budget=budget):
        oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert budget.spent_usd == pytest.approx(OPENAI_COST)
        oai.chat.completions.create(model="gpt-test", messages=MESSAGES)  # made: its cost is only known after
        assert budget.spent_usd == pytest.approx(2 * OPENAI_COST) and budget.exhausted
        with pytest.raises(BudgetExceeded):
            oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert len(providers.requests) == 2 and len(recording.spans) == 2


def test_a_step_that_reserved_an_estimate_settles_the_budget_itself(
    oai: openai.OpenAI, recording: RecordingTransport, tracer: Tracer
) -> None:
    budget = Budget(1.0)
    with tracer.start("agent", budget=budget) as trace, trace.span("draft", estimate_usd=0.01):
        oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert budget.spent_usd == pytest.approx(0.01)  # the step's estimate, not estimate + actual
    assert len(recording.spans) == 1


def test_raw_responses_pass_through_unrecorded(oai: openai.OpenAI, recording: RecordingTransport) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello world!"
    assert recording.spans == []
