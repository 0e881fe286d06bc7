"""OTLP spans to tokentrace spans: every GenAI attribute, old and new names, cache tokens priced once, skips."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OTLPSpan

from tokentrace.core.ingest import CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE, prepare_batch
from tokentrace.core.limits import MAX_ATTRIBUTES, MAX_ATTRIBUTES_CHARS, text_limit_error
from tokentrace.core.otlp import (
    CACHE_READ_NAMES,
    CACHE_WRITE_NAMES,
    PROVIDERS,
    SKIP_REASONS,
    Conversion,
    convert_request,
)
from tokentrace.core.pricing import PriceTable
from tokentrace.core.span import MAX_TOKENS, Span
from tokentrace.core.timefmt import format_ms, now_ms

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")
#: A minute ago, on a whole millisecond plus 123 456 ns, so truncation to milliseconds is visible.
START_NS = (now_ms() - 60_000) * 1_000_000 + 123_456
DURATION_NS = 1_234_567_891
#: A minimal inference span as the semantic conventions describe it.
GENAI: dict[str, Any] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 200,
}


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=value)


def key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attributes.items()]


def otlp_span(
    attributes: dict[str, Any],
    *,
    name: str = "chat gpt-4o",
    trace_id: bytes = TRACE_ID,
    span_id: bytes = SPAN_ID,
    parent: bytes = b"",
    start_ns: int = START_NS,
    duration_ns: int = DURATION_NS,
    status: int = Status.STATUS_CODE_UNSET,
    message: str = "",
    kind: int = OTLPSpan.SPAN_KIND_CLIENT,
    events: list[tuple[str, dict[str, Any]]] | None = None,
) -> OTLPSpan:
    return OTLPSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + duration_ns if start_ns else 0,
        attributes=key_values(attributes),
        status=Status(code=status, message=message),  # type: ignore[arg-type]
        events=[
            OTLPSpan.Event(name=event, time_unix_nano=start_ns, attributes=key_values(attrs))
            for event, attrs in events or []
        ],
    )


def export_request(*spans: OTLPSpan, service: str | None = "summarizer") -> ExportTraceServiceRequest:
    resource = Resource(attributes=key_values({"service.name": service} if service else {"host.name": "h"}))
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])]
    )


def convert(attributes: dict[str, Any], **kwargs: Any) -> Conversion:
    return convert_request(export_request(otlp_span(attributes, **kwargs)))


def one(attributes: dict[str, Any], **kwargs: Any) -> Span:
    conversion = convert(attributes, **kwargs)
    assert conversion.skipped == {}, conversion.message()
    (span,) = conversion.spans
    return span


def skipped(attributes: dict[str, Any], **kwargs: Any) -> str:
    conversion = convert(attributes, **kwargs)
    assert conversion.spans == []
    (reason,) = conversion.skipped
    return reason


# ------------------------------------------------------------------------------------------ fields


def test_a_chat_span_maps_every_field() -> None:
    span = one(GENAI | {"workflow": "summary", "retries": 2, "beta": True, "temperature": 0.2}, parent=PARENT_ID)
    assert span.trace_id == "5b8efff798038103d269b633813fc60c"
    assert span.span_id == "eee19b7ec3c1b174" and span.parent_span_id == "eee19b7ec3c1b173"
    assert span.name == "chat gpt-4o"
    assert (span.model, span.provider, span.caller) == ("gpt-4o", "openai", "summarizer")
    assert (span.prompt_tokens, span.comp_tokens, span.total_tokens) == (1000, 200, 1200)
    assert span.cost_usd is None  # priced at ingest, like every span sent without a cost
    assert span.latency_ms == DURATION_NS / 1e6  # to the nanosecond, not from the millisecond timestamps
    assert span.started_at == format_ms(START_NS // 1_000_000)
    assert span.ended_at == format_ms((START_NS + DURATION_NS) // 1_000_000)
    assert (span.status, span.error) == ("ok", None)
    # What the span's fields already say is not repeated as attributes; the rest is kept.
    assert span.attributes == {
        "gen_ai.operation.name": "chat",
        "workflow": "summary",
        "retries": 2,
        "beta": True,
        "temperature": 0.2,
    }


def test_a_root_span_has_no_parent() -> None:
    assert one(GENAI).parent_span_id is None


def test_caller_is_the_resource_service_name() -> None:
    assert convert_request(export_request(otlp_span(GENAI), service="billing")).spans[0].caller == "billing"
    assert convert_request(export_request(otlp_span(GENAI), service=None)).spans[0].caller == ""


def test_spans_without_times_count_at_arrival() -> None:
    span = one(GENAI, start_ns=0)
    assert span.started_at is None and span.ended_at is None and span.latency_ms is None


def test_response_model_wins_and_a_different_request_model_is_kept() -> None:
    span = one(GENAI | {"gen_ai.response.model": "gpt-4o-2024-08-06"})
    assert span.model == "gpt-4o-2024-08-06"
    assert span.attributes["gen_ai.request.model"] == "gpt-4o"
    assert "gen_ai.request.model" not in one(GENAI | {"gen_ai.response.model": "gpt-4o"}).attributes
    only_response = {k: v for k, v in GENAI.items() if k != "gen_ai.request.model"}
    assert one(only_response | {"gen_ai.response.model": "gpt-4o-mini"}).model == "gpt-4o-mini"


def test_provider_name_wins_over_the_older_system() -> None:
    assert one(GENAI | {"gen_ai.system": "anthropic"}).provider == "openai"
    older = {k: v for k, v in GENAI.items() if k != "gen_ai.provider.name"} | {"gen_ai.system": "anthropic"}
    assert one(older).provider == "anthropic"
    without = {k: v for k, v in GENAI.items() if k != "gen_ai.provider.name"}
    assert one(without).provider == ""


@pytest.mark.parametrize(("otel", "ours"), sorted(PROVIDERS.items()))
def test_well_known_providers_take_the_price_table_names(otel: str, ours: str) -> None:
    span = one(GENAI | {"gen_ai.provider.name": otel})
    assert span.provider == ours
    assert span.attributes.get("gen_ai.provider.name") == (None if otel == ours else otel)


def test_an_unknown_provider_is_kept_as_sent() -> None:
    span = one(GENAI | {"gen_ai.provider.name": "ibm.watsonx.ai"})
    assert span.provider == "ibm.watsonx.ai" and "gen_ai.provider.name" not in span.attributes


def test_deprecated_token_names_are_read() -> None:
    old = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}
    span = one(old | {"gen_ai.usage.prompt_tokens": 30, "gen_ai.usage.completion_tokens": 7})
    assert (span.prompt_tokens, span.comp_tokens) == (30, 7)
    both = old | {"gen_ai.usage.input_tokens": 31, "gen_ai.usage.prompt_tokens": 30}
    assert one(both).prompt_tokens == 31


def test_one_token_count_is_enough() -> None:
    output_only = one({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.output_tokens": 5})
    assert (output_only.prompt_tokens, output_only.comp_tokens, output_only.total_tokens) == (None, 5, 5)
    integral_double = one({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 12.0})
    assert integral_double.prompt_tokens == 12


def test_operation_name_is_kept_for_grouping() -> None:
    assert one(GENAI | {"gen_ai.operation.name": "embeddings"}).attributes["gen_ai.operation.name"] == "embeddings"


# ------------------------------------------------------------------------------------- cache tokens


@pytest.mark.parametrize(("read_name", "write_name"), list(zip(CACHE_READ_NAMES, CACHE_WRITE_NAMES, strict=True)))
def test_cache_tokens_in_every_spelling_land_where_ingest_prices_them(read_name: str, write_name: str) -> None:
    span = one(GENAI | {read_name: 600, write_name: 100})
    assert span.prompt_tokens == 1000  # input_tokens already includes cached tokens (the conventions)
    assert span.attributes[CACHE_READ_ATTRIBUTE] == 600 and span.attributes[CACHE_WRITE_ATTRIBUTE] == 100
    assert not {read_name, write_name} & (set(span.attributes) - {CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE})


def test_the_current_cache_names_win_over_older_ones() -> None:
    span = one(GENAI | {CACHE_READ_NAMES[1]: 5, CACHE_READ_NAMES[0]: 600, CACHE_WRITE_NAMES[2]: 9})
    assert span.attributes[CACHE_READ_ATTRIBUTE] == 600 and span.attributes[CACHE_WRITE_ATTRIBUTE] == 9


def test_cached_counts_beyond_input_tokens_mean_the_sender_left_them_out() -> None:
    """Anthropic reports input_tokens without cached tokens; an instrumentation passing that on as is
    can only be recognised when the cached counts exceed it. Then they are added, priced once."""
    anthropic = {"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-3-5-haiku-20241022"}
    span = one(anthropic | {"gen_ai.usage.input_tokens": 10, CACHE_READ_NAMES[0]: 5000, CACHE_WRITE_NAMES[0]: 300})
    assert span.prompt_tokens == 5310
    only_cached = one(anthropic | {CACHE_READ_NAMES[0]: 40, "gen_ai.usage.output_tokens": 3})
    assert only_cached.prompt_tokens == 40


def test_no_cache_attributes_when_nothing_was_cached() -> None:
    span = one(GENAI | {CACHE_READ_NAMES[0]: 0})
    assert CACHE_READ_ATTRIBUTE not in span.attributes and CACHE_WRITE_ATTRIBUTE not in span.attributes


#: Round prices (USD per million tokens) so the oracle is plain arithmetic.
PRICES = {"house-model": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75}}


def priced(span: Span, table: PriceTable) -> float | None:
    arrival = now_ms()
    prepare_batch([span], arrival, table, arrival - 86_400_000, 300_000)
    return span.cost_usd


@pytest.mark.parametrize(
    ("input_tokens", "read", "write", "uncached"),
    [
        (1000, 600, 100, 300),  # input includes the cached tokens: 300 at the input rate
        (10, 600, 100, 10),  # input left them out (more cached than input): all 10 at the input rate
        (1000, 0, 0, 1000),
    ],
)
def test_cached_tokens_are_priced_once_at_the_cache_rates(
    input_tokens: int, read: int, write: int, uncached: int
) -> None:
    attrs = {"gen_ai.request.model": "house-model", "gen_ai.usage.input_tokens": input_tokens}
    attrs |= {"gen_ai.usage.output_tokens": 50, CACHE_READ_NAMES[0]: read, CACHE_WRITE_NAMES[0]: write}
    expected = (uncached * 3.0 + 50 * 15.0 + read * 0.3 + write * 3.75) / 1e6
    cost = priced(one(attrs), PriceTable(PRICES, use_library=False))
    assert cost is not None and math.isclose(cost, expected, rel_tol=1e-9)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-3-5-haiku-20241022"),
        ("openai", "gpt-4o-2024-08-06"),
        ("aws.bedrock", "claude-3-5-haiku-20241022"),
    ],
)
def test_library_prices_match_the_price_table_oracle(provider: str, model: str) -> None:
    attrs = {"gen_ai.provider.name": provider, "gen_ai.response.model": model, "gen_ai.usage.input_tokens": 12_000}
    attrs |= {"gen_ai.usage.output_tokens": 800, CACHE_READ_NAMES[0]: 9_000, CACHE_WRITE_NAMES[0]: 2_000}
    table = PriceTable()
    cost = priced(one(attrs), table)
    oracle = PriceTable().cost(
        model, 12_000, 800, PROVIDERS[provider], cache_read_tokens=9_000, cache_write_tokens=2_000
    )
    assert oracle is not None and cost == oracle
    uncached = PriceTable().cost(model, 12_000, 800, PROVIDERS[provider])
    assert uncached is not None and cost < uncached  # cache reads are cheaper: counted at their rate, once


# ------------------------------------------------------------------------------------ status, score


def test_status_error_carries_type_and_message() -> None:
    span = one(GENAI | {"error.type": "RateLimitError"}, status=Status.STATUS_CODE_ERROR, message="429 slow down")
    assert (span.status, span.error) == ("error", "RateLimitError: 429 slow down")
    assert "error.type" not in span.attributes


def test_error_type_alone_is_an_error() -> None:
    assert (one(GENAI | {"error.type": "500"}).status, one(GENAI | {"error.type": "500"}).error) == ("error", "500")


def test_status_error_alone_is_an_error() -> None:
    span = one(GENAI, status=Status.STATUS_CODE_ERROR)
    assert (span.status, span.error) == ("error", None)


@pytest.mark.parametrize("error_type", ["timeout", "TimeoutError", "openai.APITimeoutError", "httpx.ReadTimeout"])
def test_timeouts_are_told_apart(error_type: str) -> None:
    assert one(GENAI | {"error.type": error_type}, status=Status.STATUS_CODE_ERROR).status == "timeout"


def test_the_exception_event_fills_in_what_the_status_lacks() -> None:
    events = [("exception", {"exception.type": "asyncio.TimeoutError", "exception.message": "after 30s"})]
    span = one(GENAI, status=Status.STATUS_CODE_ERROR, events=events)
    assert (span.status, span.error) == ("timeout", "asyncio.TimeoutError: after 30s")


def test_ok_and_unset_are_ok() -> None:
    assert one(GENAI, status=Status.STATUS_CODE_OK).status == "ok"
    assert one(GENAI, status=Status.STATUS_CODE_UNSET, message="ignored").error is None


def test_evaluation_score_is_the_quality_score() -> None:
    span = one(GENAI | {"gen_ai.evaluation.score.value": 0.87})
    assert span.score == 0.87 and "gen_ai.evaluation.score.value" not in span.attributes
    assert one(GENAI | {"eval.score": 3}).score == 3.0
    both = one(GENAI | {"eval.score": 0.1, "gen_ai.evaluation.score.value": 0.9})
    assert both.score == 0.9


def test_evaluation_result_events_score_the_span() -> None:
    events = [
        ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "Relevance", "gen_ai.evaluation.score.label": "x"}),
        ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "Relevance", "gen_ai.evaluation.score.value": 4.0}),
        ("gen_ai.evaluation.result", {"gen_ai.evaluation.score.value": 1.0}),
    ]
    assert one(GENAI, events=events).score == 4.0
    assert one(GENAI).score is None


@pytest.mark.parametrize("bad", ["high", True, 1e300, float("nan"), [1.0]])
def test_a_score_that_is_not_a_number_in_range_is_dropped_not_the_span(bad: Any) -> None:
    span = one(GENAI | {"gen_ai.evaluation.score.value": bad})
    assert span.score is None and "eval.score" not in span.attributes


# ------------------------------------------------------------------------------------ attributes kept


def test_contents_ids_long_text_and_structured_values_are_not_kept() -> None:
    noisy = {
        "gen_ai.input.messages": '[{"role": "user", "parts": []}]',
        "gen_ai.output.messages": "[]",
        "gen_ai.system_instructions": "be brief",
        "gen_ai.prompt.0.content": "hello",
        "gen_ai.completion.0.content": "hi",
        "gen_ai.prompt": "old style",
        "gen_ai.response.id": "chatcmpl-123",
        "gen_ai.response.finish_reasons": ["stop"],
        "blob": b"\x00\x01",
        "essay": "x" * 1025,
        "ratio": float("inf"),
        "short": "y" * 1024,
        "server.address": "api.openai.com",
    }
    assert one(GENAI | noisy).attributes == {
        "gen_ai.operation.name": "chat",
        "short": "y" * 1024,
        "server.address": "api.openai.com",
    }


# ------------------------------------------------------------------------------------------- skips


def test_spans_without_a_model_are_skipped_as_no_model() -> None:
    assert skipped({"http.request.method": "POST", "gen_ai.usage.input_tokens": 5}) == "no_model"
    assert skipped({"gen_ai.request.model": ""} | {"gen_ai.usage.input_tokens": 5}) == "no_model"
    assert skipped({"gen_ai.request.model": 7, "gen_ai.usage.input_tokens": 5}) == "no_model"


def test_a_model_without_token_counts_is_skipped_as_no_tokens() -> None:
    assert skipped({"gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat"}) == "no_tokens"


@pytest.mark.parametrize(
    ("operation", "kind", "reason"),
    [
        ("invoke_agent", OTLPSpan.SPAN_KIND_INTERNAL, "aggregate"),
        ("invoke_workflow", OTLPSpan.SPAN_KIND_INTERNAL, "aggregate"),
        ("invoke_workflow", OTLPSpan.SPAN_KIND_CLIENT, "aggregate"),
    ],
)
def test_agent_and_workflow_spans_summing_their_children_are_skipped(operation: str, kind: int, reason: str) -> None:
    assert skipped(GENAI | {"gen_ai.operation.name": operation}, kind=kind) == reason


def test_a_remote_agent_invocation_is_the_only_record_of_its_inference_and_is_kept() -> None:
    span = one(GENAI | {"gen_ai.operation.name": "invoke_agent"}, kind=OTLPSpan.SPAN_KIND_CLIENT)
    assert span.prompt_tokens == 1000


@pytest.mark.parametrize(
    "attrs",
    [
        GENAI | {"gen_ai.usage.input_tokens": -1},
        GENAI | {"gen_ai.usage.output_tokens": 10**13},
        GENAI | {"gen_ai.usage.input_tokens": 1.5},
        GENAI | {"gen_ai.usage.input_tokens": "100"},
        GENAI | {"gen_ai.usage.output_tokens": True},
        GENAI | {CACHE_READ_NAMES[0]: -5},
        GENAI | {"gen_ai.request.model": "gpt\x1f4o"},
    ],
    ids=["negative", "huge", "fractional", "text", "bool", "negative-cache", "control-character"],
)
def test_out_of_range_values_are_skipped_as_invalid(attrs: dict[str, Any]) -> None:
    assert skipped(attrs) == "invalid"


def test_end_before_start_is_invalid() -> None:
    assert skipped(GENAI, duration_ns=-1_000_000) == "invalid"


def test_partial_conversion_counts_by_reason_and_explains() -> None:
    request = export_request(
        otlp_span(GENAI, span_id=b"\x01" * 8),
        otlp_span({"http.route": "/"}, span_id=b"\x02" * 8),
        otlp_span({"db.system": "redis"}, span_id=b"\x03" * 8),
        otlp_span(GENAI | {"gen_ai.usage.input_tokens": -3}, span_id=b"\x04" * 8),
    )
    conversion = convert_request(request)
    assert [s.span_id for s in conversion.spans] == ["0101010101010101"]
    assert conversion.skipped == {"no_model": 2, "invalid": 1} and conversion.rejected == 3
    message = conversion.message()
    assert message.startswith("skipped 3 of 4 spans: 1 with values out of range, 2 without a GenAI model")
    assert "span 0404040404040404: prompt_tokens must be between 0" in message
    assert convert_request(export_request(otlp_span(GENAI))).message() == ""


def test_many_resources_and_scopes_are_all_read() -> None:
    request = export_request(otlp_span(GENAI, span_id=b"\x01" * 8), service="a")
    request.resource_spans.extend(export_request(otlp_span(GENAI, span_id=b"\x02" * 8), service="b").resource_spans)
    request.resource_spans[0].scope_spans.append(ScopeSpans(spans=[otlp_span(GENAI, span_id=b"\x03" * 8)]))
    spans = convert_request(request).spans
    assert sorted((s.caller, s.span_id) for s in spans) == [
        ("a", "0101010101010101"),
        ("a", "0303030303030303"),
        ("b", "0202020202020202"),
    ]


def test_an_empty_request_converts_to_nothing() -> None:
    conversion = convert_request(ExportTraceServiceRequest())
    assert conversion.spans == [] and conversion.rejected == 0


# ------------------------------------------------------------------------------------------ property

_numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2**31, MAX_TOKENS, MAX_TOKENS + 1, 0.5, 1e300]),
)
_values = st.one_of(_numbers, st.booleans(), st.text(max_size=12), st.sampled_from(["gpt-4o", "claude-3-5-haiku"]))
_keys = st.sampled_from(
    [
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.operation.name",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.evaluation.score.value",
        "eval.score",
        "error.type",
        *CACHE_READ_NAMES,
        *CACHE_WRITE_NAMES,
    ]
)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    attributes=st.dictionaries(_keys, _values, max_size=8),
    base=st.sampled_from([{}, GENAI]),
    start_ns=st.integers(min_value=0, max_value=2**64 - 1),
    duration_ns=st.integers(min_value=-(2**40), max_value=2**64 - 1),
    status=st.sampled_from([0, 1, 2, 7]),
)
def test_any_attribute_values_convert_or_skip_and_always_price(
    attributes: dict[str, Any], base: dict[str, Any], start_ns: int, duration_ns: int, status: int
) -> None:
    """Whatever the values, conversion never raises, and no converted span can fail ingest's pricing
    (cached tokens beyond the prompt, negative counts) and so reject a whole batch."""
    end_ns = min(max(start_ns + duration_ns, 0), 2**64 - 1)
    span = otlp_span(base | attributes, start_ns=start_ns, duration_ns=0, status=status)
    span.end_time_unix_nano = end_ns
    conversion = convert_request(export_request(span))
    assert len(conversion.spans) + conversion.rejected == 1
    assert set(conversion.skipped) <= set(SKIP_REASONS)
    for converted in conversion.spans:
        prepare_batch([converted], now_ms(), PriceTable(), 0, 10**15)


def test_attributes_past_the_span_caps_are_dropped_not_the_span() -> None:
    """200 attributes of 1000 characters: the span is kept, with what fits the caps of ``core.limits``."""
    many = {f"tool.{i}.description": "d" * 1000 for i in range(200)} | {"small": 1}
    conversion = convert_request(export_request(otlp_span(GENAI | many)))
    [span] = conversion.spans
    assert not conversion.skipped
    assert len(span.attributes) <= MAX_ATTRIBUTES
    assert sum(len(k) + (len(v) if isinstance(v, str) else 0) for k, v in span.attributes.items()) <= (
        MAX_ATTRIBUTES_CHARS
    )
    assert span.attributes["small"] == 1 and span.attributes["gen_ai.operation.name"] == "chat"
    assert text_limit_error(span) is None


def test_a_model_name_over_its_cap_skips_the_span_as_invalid() -> None:
    conversion = convert_request(export_request(otlp_span(GENAI | {"gen_ai.request.model": "m" * 257})))
    assert conversion.spans == [] and conversion.skipped == {"invalid": 1}
    assert "model" in conversion.message()
