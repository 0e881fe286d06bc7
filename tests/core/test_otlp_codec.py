"""OTLP/HTTP bodies: protobuf and OTLP JSON decode to the same message; responses and Status encode right."""

from __future__ import annotations

import base64
import json
from typing import Any
from unittest import mock

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.core.test_otlp import GENAI, PARENT_ID, SPAN_ID, TRACE_ID, export_request, otlp_span
from tokentrace.core import otlp_codec
from tokentrace.core.otlp_codec import (
    JSON,
    PROTOBUF,
    OTLPDecodeError,
    decode_request,
    encode_response,
    encode_status,
    encoding_of,
)


def otlp_json(span: dict[str, Any]) -> bytes:
    """An OTLP JSON body with one span, written the way the OTLP JSON encoding spells it."""
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "summarizer"}}]},
                "scopeSpans": [{"scope": {"name": "manual"}, "spans": [span]}],
            }
        ]
    }
    return json.dumps(body).encode()


JSON_SPAN: dict[str, Any] = {
    "traceId": TRACE_ID.hex().upper(),  # hex is case-insensitive
    "spanId": SPAN_ID.hex(),
    "parentSpanId": PARENT_ID.hex(),
    "name": "chat gpt-4o",
    "kind": 3,  # enums are integers in OTLP JSON
    "startTimeUnixNano": "1700000000123456789",  # int64 as a decimal string ...
    "endTimeUnixNano": 1700000001358024680,  # ... or as a number
    "attributes": [
        {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1000"}},
        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 200}},
        {"key": "gen_ai.evaluation.score.value", "value": {"doubleValue": 0.5}},
        {"key": "beta", "value": {"boolValue": True}},
    ],
    "status": {"code": 2, "message": "boom"},
    "links": [{"traceId": "00" * 16, "spanId": "ab" * 8}],
    "someFutureField": {"ignored": True},  # unknown fields are ignored
}


def test_json_and_protobuf_decode_to_the_same_message() -> None:
    decoded = decode_request(otlp_json(JSON_SPAN), JSON)
    span = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE_ID, SPAN_ID, PARENT_ID)
    assert span.start_time_unix_nano == 1700000000123456789 and span.end_time_unix_nano == 1700000001358024680
    assert span.kind == 3 and span.status.code == 2 and span.status.message == "boom"
    assert span.links[0].span_id == bytes.fromhex("ab" * 8)
    attributes = {kv.key: kv.value for kv in span.attributes}
    assert attributes["gen_ai.usage.input_tokens"].int_value == 1000
    assert attributes["gen_ai.usage.output_tokens"].int_value == 200
    assert decode_request(decoded.SerializeToString(), PROTOBUF) == decoded


def test_protobuf_from_the_builders_round_trips() -> None:
    request = export_request(otlp_span(GENAI, parent=PARENT_ID))
    assert decode_request(request.SerializeToString(), PROTOBUF) == request


def test_snake_case_keys_are_accepted_too() -> None:
    body = {"resource_spans": [{"scope_spans": [{"spans": [{"trace_id": TRACE_ID.hex(), "span_id": SPAN_ID.hex()}]}]}]}
    span = decode_request(json.dumps(body).encode(), JSON).resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id, span.span_id) == (TRACE_ID, SPAN_ID)


@pytest.mark.parametrize("encoding", [JSON, PROTOBUF])
def test_an_empty_request_is_valid(encoding: str) -> None:
    body = b"{}" if encoding == JSON else b""
    assert decode_request(body, encoding) == ExportTraceServiceRequest()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"resourceSpans": ', "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"resourceSpans": 5}', "resourceSpans"),
        (b'{"resourceSpans": [null]}', "resourceSpans"),
        (
            otlp_json(JSON_SPAN | {"traceId": "not hex"}),
            "resourceSpans[0].scopeSpans[0].spans[0].traceId must be a hex",
        ),
        (otlp_json(JSON_SPAN | {"spanId": "abc"}), "spanId must be a hex"),
        (otlp_json(JSON_SPAN | {"spanId": 12}), "spanId must be a hex"),
        (otlp_json(JSON_SPAN | {"startTimeUnixNano": -1}), "startTimeUnixNano"),
        (otlp_json(JSON_SPAN | {"startTimeUnixNano": True}), "startTimeUnixNano"),
        (otlp_json(JSON_SPAN | {"attributes": [{"key": "k", "value": {"intValue": "x"}}]}), "intValue"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
        (b'{"resourceSpans": ["abc"]}', "$.resourceSpans[0] must be a JSON object (ResourceSpans)"),
        (b'{"resourceSpans": [{"scopeSpans": {}}]}', "$.resourceSpans[0].scopeSpans must be a JSON array"),
        (otlp_json(JSON_SPAN | {"status": "error"}), "spans[0].status must be a JSON object (Status)"),
        (otlp_json(JSON_SPAN | {"links": [{"spanId": "zz"}]}), "spans[0].links[0].spanId must be a hex"),
        (
            b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": {"kvlistValue": []}}]}}]}',
            "kvlistValue",
        ),
    ],
    ids=[
        "truncated",
        "not-utf8",
        "array",
        "not-a-list",
        "null-item",
        "bad-hex",
        "odd-hex",
        "number-id",
        "negative-time",
        "bool-time",
        "bad-int",
        "deep-nesting",
        "string-for-a-message",
        "object-for-a-list",
        "string-status",
        "bad-link-id",
        "list-for-a-kvlist",
    ],
)
def test_undecodable_json_says_what_is_wrong(body: bytes, error: str) -> None:
    with pytest.raises(OTLPDecodeError) as raised:
        decode_request(body, JSON)
    assert error in str(raised.value)


@pytest.mark.parametrize("body", [b"\x00", b"garbage", b"\x0a\x05hello", b"\xff" * 10])
def test_undecodable_protobuf_is_an_error(body: bytes) -> None:
    with pytest.raises(OTLPDecodeError, match="not a protobuf ExportTraceServiceRequest"):
        decode_request(body, PROTOBUF)


def test_full_success_leaves_partial_success_unset() -> None:
    assert encode_response(0, "", PROTOBUF) == b""
    assert encode_response(0, "", JSON) == b"{}"
    assert not ExportTraceServiceResponse.FromString(encode_response(0, "", PROTOBUF)).HasField("partial_success")


@pytest.mark.parametrize("encoding", [JSON, PROTOBUF])
def test_partial_success_carries_count_and_message(encoding: str) -> None:
    body = encode_response(3, "skipped 3 of 5 spans", encoding)  # type: ignore[arg-type]
    if encoding == JSON:
        assert json.loads(body) == {"partialSuccess": {"rejectedSpans": "3", "errorMessage": "skipped 3 of 5 spans"}}
        response = json_format.Parse(body, ExportTraceServiceResponse())
    else:
        response = ExportTraceServiceResponse.FromString(body)
    assert response.partial_success.rejected_spans == 3
    assert response.partial_success.error_message == "skipped 3 of 5 spans"


@pytest.mark.parametrize(
    ("code", "message"), [(3, "bad"), (0, "no code"), (8, ""), (14, "é" * 300), (2**31 - 1, "x" * 70_000)]
)
def test_status_matches_googleapis_message(code: int, message: str) -> None:
    body = encode_status(code, message)
    assert body == status_pb2.Status(code=code, message=message).SerializeToString()
    decoded = status_pb2.Status.FromString(body)
    assert (decoded.code, decoded.message) == (code, message)


@pytest.mark.parametrize(
    ("header", "encoding"),
    [
        ("application/x-protobuf", PROTOBUF),
        ("Application/X-Protobuf; charset=binary", PROTOBUF),
        ("application/protobuf", PROTOBUF),
        ("application/json", JSON),
        ("application/json; charset=utf-8", JSON),
        ("text/plain", None),
        ("", None),
        ("application/grpc", None),
    ],
)
def test_media_types(header: str, encoding: str | None) -> None:
    assert encoding_of(header) == encoding


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON_VALUES, spacing=st.sampled_from([None, 1]), split_bytes=st.sampled_from([0, 8, 64]))
def test_a_body_parsed_in_pieces_is_what_json_loads_makes_of_it(
    value: Any, spacing: int | None, split_bytes: int
) -> None:
    """The pieces (every container longer than ``split_bytes`` split into its members, whitespace anywhere)
    parse to what one ``json.loads`` of the whole body gives, dict order and duplicate keys included."""
    body = json.dumps(value, indent=spacing, ensure_ascii=False).encode()
    with mock.patch.object(otlp_codec, "_SPLIT_BYTES", split_bytes):
        parsed = otlp_codec._loads(body)
    assert parsed == json.loads(body)
    assert json.dumps(parsed) == json.dumps(json.loads(body))  # dict order too


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1, "b": {"c": [1, 2]}, "a": [3]}',  # a duplicate key: its first place, its last value
        b'\xef\xbb\xbf{"a": [1, 2, 3]}',  # a UTF-8 BOM: json.loads takes it, the scan does not
        '{"a": ["\u00e9", 1e400]}'.encode("utf-16"),  # not UTF-8: json.loads detects it
        b"[1, 2] [3]",  # trailing data: json.loads's error
        b'{"a": "\\ud800"}',  # a lone surrogate escape
        b'{"a": NaN}',  # not JSON, but json.loads takes it
    ],
    ids=["duplicate-key", "bom", "utf-16", "trailing", "surrogate", "nan"],
)
def test_bodies_the_scan_refuses_are_parsed_as_before(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_codec, "_SPLIT_BYTES", 0)
    try:
        expected: Any = json.loads(body)
    except ValueError as exc:
        expected = type(exc)
    try:
        got: Any = otlp_codec._loads(body)
    except ValueError as exc:
        got = type(exc)
    assert json.dumps(got, default=repr) == json.dumps(expected, default=repr)


def test_a_big_request_decodes_in_pieces_to_the_same_message() -> None:
    """No single ``json.loads`` call gets more than ``_SPLIT_BYTES`` (each holds the GIL throughout)."""
    spans = [otlp_span(GENAI, span_id=i.to_bytes(8, "big")) for i in range(1, 2001)]
    request = export_request(*spans)
    body = otlp_json_of(request)
    assert len(body) > 10 * otlp_codec._SPLIT_BYTES
    sizes: list[int] = []
    original = json.loads

    def loads(raw: bytes) -> Any:
        sizes.append(len(raw))
        return original(raw)

    with mock.patch.object(otlp_codec.json, "loads", loads):
        assert decode_request(body, JSON) == request
    assert len(sizes) > 2000
    assert max(sizes) <= otlp_codec._SPLIT_BYTES


def otlp_json_of(request: ExportTraceServiceRequest) -> bytes:
    document = json_format.MessageToDict(request)
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for field in ("traceId", "spanId"):
                    span[field] = base64.b64decode(span[field]).hex()
    return json.dumps(document).encode()
