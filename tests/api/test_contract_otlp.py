"""POST /v1/traces: OTLP/HTTP in protobuf and JSON, gzip, partial success, errors, and the real SDK exporter."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random
import tracemalloc
import zlib
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import MakeClient
from tests.api.test_openapi import assert_conforms
from tests.core.test_otlp import GENAI, START_NS, export_request, otlp_span
from tokentrace.core.otlp import CACHE_READ_NAMES, CACHE_WRITE_NAMES
from tokentrace.core.pricing import PriceTable
from tokentrace.core.timefmt import now_ms

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACE = "5b8efff798038103d269b633813fc60c"


def to_otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """The request in the OTLP JSON encoding: protobuf's JSON mapping with hex instead of base64 ids."""
    document = json_format.MessageToDict(request)
    for resource in document.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for field in ("traceId", "spanId", "parentSpanId"):
                    if field in span:
                        span[field] = base64.b64decode(span[field]).hex()
    return json.dumps(document).encode()


def body_of(request: ExportTraceServiceRequest, media_type: str) -> bytes:
    return request.SerializeToString() if media_type == PROTOBUF else to_otlp_json(request)


async def export(
    client: TestClient[Any, Any], data: bytes, media_type: str = PROTOBUF, **headers: str
) -> tuple[int, str, bytes]:
    response = await client.post("/v1/traces", data=data, headers={"Content-Type": media_type, **headers})
    return response.status, response.content_type, await response.read()


def response_of(body: bytes, media_type: str) -> ExportTraceServiceResponse:
    if media_type == PROTOBUF:
        return ExportTraceServiceResponse.FromString(body)
    return json_format.Parse(body, ExportTraceServiceResponse())


def error_of(body: bytes, media_type: str) -> str:
    """The error text: the ``{"error"}`` envelope for JSON, a google.rpc.Status for protobuf."""
    if media_type == JSON:
        decoded = json.loads(body)
        assert set(decoded) == {"error"}
        return str(decoded["error"])
    return str(status_pb2.Status.FromString(body).message)


async def skipped_counter(client: TestClient[Any, Any]) -> dict[str, float]:
    text = await (await client.get("/metrics/prometheus")).text()
    for family in text_string_to_metric_families(text):
        if family.name == "tokentrace_otlp_skipped_spans":
            return {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}
    return {}


def cost_oracle(model: str, provider: str, prompt: int, comp: int, read: int = 0, write: int = 0) -> float:
    cost = PriceTable().cost(model, prompt, comp, provider, cache_read_tokens=read, cache_write_tokens=write)
    assert cost is not None
    return cost


# ------------------------------------------------------------------------------------------ success


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_an_export_is_answered_in_its_encoding_and_stored(client: TestClient[Any, Any], media_type: str) -> None:
    attrs = GENAI | {CACHE_READ_NAMES[0]: 400, "gen_ai.evaluation.score.value": 0.75}
    request = export_request(otlp_span(attrs, trace_id=bytes.fromhex(TRACE), parent=b"\x07" * 8))
    status, content_type, body = await export(client, body_of(request, media_type), media_type)
    assert (status, content_type) == (200, media_type)
    assert body == (b"" if media_type == PROTOBUF else b"{}")  # full success: partial_success unset
    assert not response_of(body, media_type).HasField("partial_success")

    trace = await (await client.get(f"/traces/{TRACE}")).json()
    (span,) = trace["spans"]
    assert span["span_id"] == "eee19b7ec3c1b174" and span["parent_span_id"] == "07" * 8
    assert (span["model"], span["provider"], span["caller"]) == ("gpt-4o", "openai", "summarizer")
    assert (span["prompt_tokens"], span["comp_tokens"], span["total_tokens"]) == (1000, 200, 1200)
    assert span["cost_usd"] == cost_oracle("gpt-4o", "openai", 1000, 200, read=400)
    assert span["latency_ms"] == pytest.approx(1234.567891)
    assert span["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.cache_read_input_tokens": 400,
        "eval.score": 0.75,
    }
    metrics = await (await client.get("/metrics", params={"window": "1h"})).json()
    assert metrics["span_count"] == 1 and metrics["quality"]["score_avg"] == 0.75
    assert metrics["tokens"] == {"prompt_total": 1000, "completion_total": 200, "total": 1200}


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_gzip_bodies_are_inflated(client: TestClient[Any, Any], media_type: str) -> None:
    request = export_request(otlp_span(GENAI))
    status, _, _ = await export(
        client, gzip.compress(body_of(request, media_type)), media_type, **{"Content-Encoding": "gzip"}
    )
    assert status == 200
    assert (await (await client.get("/metrics")).json())["span_count"] == 1


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_an_empty_request_is_a_success(client: TestClient[Any, Any], media_type: str) -> None:
    body = b"" if media_type == PROTOBUF else b"{}"
    assert (await export(client, body, media_type))[:2] == (200, media_type)


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_skipped_spans_make_a_partial_success_and_are_counted(
    client: TestClient[Any, Any], media_type: str
) -> None:
    assert await skipped_counter(client) == {"no_model": 0, "aggregate": 0, "no_tokens": 0, "invalid": 0}
    request = export_request(
        otlp_span(GENAI, span_id=b"\x01" * 8),
        otlp_span({"http.route": "/chat"}, span_id=b"\x02" * 8),
        otlp_span({"db.system": "redis"}, span_id=b"\x03" * 8),
        otlp_span({"gen_ai.request.model": "gpt-4o"}, span_id=b"\x04" * 8),
    )
    status, content_type, body = await export(client, body_of(request, media_type), media_type)
    assert (status, content_type) == (200, media_type)
    partial = response_of(body, media_type).partial_success
    assert partial.rejected_spans == 3
    assert partial.error_message.startswith("skipped 3 of 4 spans: 2 without a GenAI model")
    assert "span 0404040404040404: model 'gpt-4o' but no token count" in partial.error_message
    assert await skipped_counter(client) == {"no_model": 2, "aggregate": 0, "no_tokens": 1, "invalid": 0}
    assert (await (await client.get("/metrics")).json())["span_count"] == 1


async def test_a_request_with_no_genai_span_stores_nothing(client: TestClient[Any, Any]) -> None:
    request = export_request(otlp_span({"http.route": "/"}), otlp_span({"rpc.system": "grpc"}))
    status, _, body = await export(client, request.SerializeToString())
    assert status == 200 and ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans == 2
    assert (await (await client.get("/metrics")).json())["span_count"] == 0


async def test_cost_is_priced_by_the_server_like_any_span(client: TestClient[Any, Any]) -> None:
    attrs = {"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-3-5-haiku-20241022"}
    attrs |= {"gen_ai.usage.input_tokens": 5000, "gen_ai.usage.output_tokens": 100}
    attrs |= {CACHE_READ_NAMES[0]: 3000, CACHE_WRITE_NAMES[0]: 1500}
    request = export_request(otlp_span(attrs, trace_id=bytes.fromhex(TRACE)))
    assert (await export(client, request.SerializeToString()))[0] == 200
    (span,) = (await (await client.get(f"/traces/{TRACE}")).json())["spans"]
    expected = cost_oracle("claude-3-5-haiku-20241022", "anthropic", 5000, 100, read=3000, write=1500)
    assert span["cost_usd"] == expected
    assert expected < cost_oracle("claude-3-5-haiku-20241022", "anthropic", 5000, 100)  # the cache rates applied


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("media_type", "body", "error"),
    [
        (JSON, b'{"resourceSpans": ', "malformed JSON"),
        (JSON, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', "must be a hex string"),
        (JSON, b'{"resourceSpans": "none"}', "resourceSpans"),
        (PROTOBUF, b"\xff\xff\xff garbage", "not a protobuf ExportTraceServiceRequest"),
    ],
)
async def test_undecodable_bodies_are_400_in_the_request_encoding(
    client: TestClient[Any, Any], media_type: str, body: bytes, error: str
) -> None:
    status, content_type, answer = await export(client, body, media_type)
    assert (status, content_type) == (400, media_type)
    assert error in error_of(answer, media_type)
    if media_type == PROTOBUF:
        assert status_pb2.Status.FromString(answer).code == 3  # INVALID_ARGUMENT


@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc", "application/x-www-form-urlencoded", ""])
async def test_other_media_types_are_415(client: TestClient[Any, Any], content_type: str) -> None:
    data = export_request(otlp_span(GENAI)).SerializeToString()
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/v1/traces", data=data, headers=headers)
    assert response.status == 415
    assert "application/x-protobuf or application/json" in (await response.json())["error"]
    assert (await (await client.get("/metrics")).json())["span_count"] == 0


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_other_content_codings_are_415(client: TestClient[Any, Any], media_type: str) -> None:
    data = body_of(export_request(otlp_span(GENAI)), media_type)
    status, content_type, body = await export(client, data, media_type, **{"Content-Encoding": "snappy"})
    assert (status, content_type) == (415, media_type)
    assert "Content-Encoding 'snappy'" in error_of(body, media_type)


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_a_body_over_max_body_bytes_is_413(make_client: MakeClient, media_type: str) -> None:
    client = await make_client("http_server: {max_body_bytes: 4096}")
    spans = [otlp_span(GENAI | {"pad": "x" * 500}, span_id=i.to_bytes(8, "big")) for i in range(1, 20)]
    status, content_type, body = await export(client, body_of(export_request(*spans), media_type), media_type)
    assert (status, content_type) == (413, media_type)
    assert "too large" in error_of(body, media_type)


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes gzip-compressed, without ever holding them in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    return b"".join([*(compressor.compress(chunk) for _ in range(size >> 20)), compressor.flush()])


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_a_gzip_bomb_is_413_without_inflating_it(make_client: MakeClient, media_type: str) -> None:
    client = await make_client("http_server: {max_body_bytes: 1048576}")
    bomb = gzip_bomb(512 << 20)  # 512 MiB of zeros in about half a megabyte
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        status, content_type, body = await export(client, bomb, media_type, **{"Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (status, content_type) == (413, media_type)
    assert "1048576" in error_of(body, media_type)
    assert peak < 32 << 20, f"peak {peak >> 20} MiB while refusing a bomb"
    assert (await export(client, export_request(otlp_span(GENAI)).SerializeToString()))[0] == 200


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_corrupt_gzip_is_refused_and_the_server_keeps_serving(
    client: TestClient[Any, Any], media_type: str
) -> None:
    """aiohttp inflates the body before the route reads it; on corrupt gzip the route answers 400, unless
    aiohttp's parser has already dropped the connection (it races the answer). Nothing is stored either way."""
    for data in (b"not gzip at all", b"\x1f\x8b\x08\x00" + b"\xff" * 64):
        try:
            status, content_type, body = await export(client, data, media_type, **{"Content-Encoding": "gzip"})
        except aiohttp.ClientError:
            continue
        assert (status, content_type) == (400, media_type)
        assert "does not decode as Content-Encoding 'gzip'" in error_of(body, media_type)
    assert (await client.get("/health")).status == 200
    assert (await (await client.get("/metrics")).json())["span_count"] == 0


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_the_shared_ingest_checks_apply(make_client: MakeClient, media_type: str) -> None:
    # max_batch_size does not apply: OTLP exporters drop a batch answered 413 instead of splitting it.
    client = await make_client("http_server: {max_batch_size: 2}")
    three = export_request(*(otlp_span(GENAI, span_id=i.to_bytes(8, "big")) for i in range(1, 4)))
    status, content_type, body = await export(client, body_of(three, media_type), media_type)
    assert (status, content_type) == (200, media_type)
    assert (await (await client.get("/metrics")).json())["span_count"] == 3

    old = export_request(otlp_span(GENAI, start_ns=(now_ms() - 40 * 86_400_000) * 1_000_000))
    status, content_type, body = await export(client, body_of(old, media_type), media_type)
    assert (status, content_type) == (400, media_type)
    assert "retention" in error_of(body, media_type)
    assert (await (await client.get("/metrics")).json())["span_count"] == 3  # the old span was not taken


async def test_the_bearer_token_guards_the_endpoint(make_client: MakeClient) -> None:
    client = await make_client("http_server: {auth_token: s3cret}")
    data = export_request(otlp_span(GENAI)).SerializeToString()
    assert (await export(client, data))[0] == 401
    assert (await export(client, data, Authorization="Bearer s3cret"))[0] == 200


async def test_json_errors_conform_to_the_document(client: TestClient[Any, Any]) -> None:
    for body, status in ((b"{", 400), (to_otlp_json(export_request(otlp_span(GENAI))), 200)):
        response = await client.post("/v1/traces", data=body, headers={"Content-Type": JSON})
        assert response.status == status
        assert_conforms("/v1/traces", "post", status, await response.json())


def mangled(valid: bytes, seed: int) -> list[bytes]:
    """Random bytes, truncations and byte flips of a valid body: deterministic, a few hundred bodies."""
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.randrange(0, 200)) for _ in range(60)]
    bodies += [valid[: rng.randrange(len(valid))] for _ in range(60)]
    for _ in range(120):
        flipped = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        bodies.append(bytes(flipped))
    return bodies


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_garbage_is_never_a_server_error(client: TestClient[Any, Any], media_type: str) -> None:
    valid = body_of(export_request(otlp_span(GENAI | {CACHE_READ_NAMES[0]: 10}, parent=b"\x05" * 8)), media_type)
    for body in mangled(valid, seed=len(media_type)):
        status, content_type, answer = await export(client, body, media_type)
        assert status in (200, 400), (status, body, answer)
        assert content_type == media_type, (status, body, answer)
        if status == 400:
            assert error_of(answer, media_type)
        else:
            response_of(answer, media_type)  # decodes
    assert (await client.get("/health")).status == 200


# -------------------------------------------------------------------------------- the real exporter


def export_with_the_sdk(url: str) -> tuple[list[Any], list[Any]]:
    """Spans made by the opentelemetry-sdk and sent by its OTLP/HTTP exporter (protobuf, gzip)."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    results: list[SpanExportResult] = []

    class Recording(OTLPSpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            result = super().export(spans)
            results.append(result)
            return result

    sent = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "e2e-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(sent))
    provider.add_span_processor(BatchSpanProcessor(Recording(endpoint=url, compression=Compression.Gzip)))
    tracer = provider.get_tracer("tests.e2e")
    with tracer.start_as_current_span("handle-request"), tracer.start_as_current_span("invoke_agent planner") as agent:
        agent.set_attributes(GENAI | {"gen_ai.operation.name": "invoke_agent"})  # sums its children
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as span:
            span.set_attributes(GENAI | {"gen_ai.response.model": "gpt-4o-2024-08-06"})
            span.set_attributes({"gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300})
            span.set_attributes({CACHE_READ_NAMES[0]: 1000, "gen_ai.evaluation.score.value": 0.9})
        with tracer.start_as_current_span("chat claude", kind=SpanKind.CLIENT) as span:
            span.set_attributes({"gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat"})
            span.set_attributes({"gen_ai.request.model": "claude-3-5-haiku-20241022"})
            span.set_attributes({"gen_ai.usage.input_tokens": 5000, "gen_ai.usage.output_tokens": 100})
            span.set_attributes({CACHE_READ_NAMES[0]: 3000, CACHE_WRITE_NAMES[0]: 1500})
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as span:
            span.set_attributes(GENAI | {"gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.output_tokens": 0})
            span.set_attributes({"gen_ai.usage.input_tokens": 50, "error.type": "openai.APITimeoutError"})
            span.set_status(StatusCode.ERROR, "Request timed out.")
    provider.shutdown()  # flushes the batch processor
    return results, list(sent.get_finished_spans())


async def test_spans_from_the_opentelemetry_sdk_exporter(client: TestClient[Any, Any]) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    results, finished = await asyncio.to_thread(export_with_the_sdk, str(client.make_url("/v1/traces")))
    assert results == [SpanExportResult.SUCCESS]
    by_name = {span.name: span for span in finished}
    trace_id = f"{by_name['handle-request'].context.trace_id:032x}"
    agent_id = f"{by_name['invoke_agent planner'].context.span_id:016x}"

    trace = await (await client.get(f"/traces/{trace_id}")).json()
    stored = {span["name"]: span for span in trace["spans"]}
    assert set(stored) == {"chat gpt-4o", "chat claude", "chat gpt-4o-mini"}  # the root and the agent are skipped
    for name, span in stored.items():
        sdk = by_name[name]
        assert span["span_id"] == f"{sdk.context.span_id:016x}" and span["parent_span_id"] == agent_id
        assert span["latency_ms"] == pytest.approx((sdk.end_time - sdk.start_time) / 1e6)
        assert span["caller"] == "e2e-agent"
    costs = {
        "chat gpt-4o": cost_oracle("gpt-4o-2024-08-06", "openai", 1200, 300, read=1000),
        "chat claude": cost_oracle("claude-3-5-haiku-20241022", "anthropic", 5000, 100, read=3000, write=1500),
        "chat gpt-4o-mini": cost_oracle("gpt-4o-mini", "openai", 50, 0),
    }
    assert {name: span["cost_usd"] for name, span in stored.items()} == costs
    assert stored["chat gpt-4o"]["model"] == "gpt-4o-2024-08-06"
    assert (stored["chat gpt-4o-mini"]["status"], stored["chat gpt-4o-mini"]["error"]) == (
        "timeout",
        "openai.APITimeoutError: Request timed out.",
    )

    metrics = await (await client.get("/metrics", params={"window": "1h"})).json()
    assert metrics["span_count"] == 3
    assert metrics["tokens"] == {"prompt_total": 6250, "completion_total": 400, "total": 6650}
    assert metrics["cost"]["total_usd"] == pytest.approx(sum(costs.values()), abs=3e-9)  # nano-dollar sums
    assert metrics["errors"]["timeout_count"] == 1 and metrics["errors"]["count"] == 0
    assert metrics["quality"]["scored_span_count"] == 1 and metrics["quality"]["score_avg"] == 0.9
    assert await skipped_counter(client) == {"no_model": 1, "aggregate": 1, "no_tokens": 0, "invalid": 0}


def test_start_ns_is_recent() -> None:
    """The shared spans start a minute ago: inside retention, not in the future."""
    assert 0 < now_ms() - START_NS // 1_000_000 < 3_600_000


@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])
async def test_more_spans_than_max_otlp_spans_is_413(make_client: MakeClient, media_type: str) -> None:
    """The cap the OpenAPI document states (``http_server.max_otlp_spans``); skipped spans count too."""
    client = await make_client("http_server: {max_otlp_spans: 20, max_batch_size: 5}")
    spans = [otlp_span(GENAI, span_id=i.to_bytes(8, "big")) for i in range(1, 21)]
    status, _, body = await export(client, body_of(export_request(*spans), media_type), media_type)
    assert status == 200, body  # 20 spans: at the cap, and max_batch_size (5) does not apply to OTLP
    spans.append(otlp_span({}, span_id=(21).to_bytes(8, "big")))  # a 21st span, one OTLP would skip
    status, content_type, body = await export(client, body_of(export_request(*spans), media_type), media_type)
    assert (status, content_type) == (413, media_type)
    assert "max_otlp_spans" in error_of(body, media_type)
    assert (await (await client.get("/metrics")).json())["span_count"] == 20
