"""OTLP/HTTP trace bodies: decode ``ExportTraceServiceRequest``, encode the response and the error ``Status``.

Two encodings share one schema (opentelemetry-proto): binary protobuf (``application/x-protobuf``) and the
OTLP JSON encoding (``application/json``), which is the proto3 JSON mapping except that ``traceId`` and
``spanId`` are hex strings instead of base64. JSON is parsed into the same messages, so everything after
decoding is one code path. Unknown fields are ignored in both encodings, as OTLP requires.

No I/O here: the route reads the (already size-bounded) body and writes what these functions return.

The route decodes big bodies in a thread, but a thread still holds the GIL, and so the server's event loop,
for as long as one call into C runs: ``json.loads`` of a 6 MB request (10k spans) was one such call of 180-250 ms.
So a JSON body is parsed in pieces (``_loads``): big objects and arrays are split into their members by a scan
that keeps each member as its raw bytes (a few ms for 6 MB), and each member is parsed on its own.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Literal

import msgspec
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = [
    "JSON",
    "PROTOBUF",
    "Encoding",
    "OTLPDecodeError",
    "decode_request",
    "encode_response",
    "encode_status",
    "encoding_of",
]

Encoding = Literal["protobuf", "json"]
PROTOBUF: Encoding = "protobuf"
JSON: Encoding = "json"

#: Media types (parameters and case ignored) and the encoding each carries. ``application/protobuf`` is
#: not in the OTLP spec but is the registered name some clients send.
_MEDIA_TYPES: dict[str, Encoding] = {
    "application/x-protobuf": PROTOBUF,
    "application/protobuf": PROTOBUF,
    "application/json": JSON,
}
#: Bytes fields written as hex in OTLP JSON, in every message that has them (Span, Link, ...).
_ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


class OTLPDecodeError(ValueError):
    """The body is not an ``ExportTraceServiceRequest`` in the declared encoding (answer 400)."""


def encoding_of(content_type: str) -> Encoding | None:
    """The encoding a ``Content-Type`` header declares, or None when it is not an OTLP media type."""
    return _MEDIA_TYPES.get(content_type.split(";", 1)[0].strip().lower())


def decode_request(body: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    """Decode a request body; raise OTLPDecodeError saying what is wrong with it."""
    if encoding == PROTOBUF:
        try:
            return ExportTraceServiceRequest.FromString(body)
        except (DecodeError, RecursionError) as exc:
            raise OTLPDecodeError(f"body is not a protobuf ExportTraceServiceRequest: {exc}") from None
    try:
        document = _loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise OTLPDecodeError(f"malformed JSON: {exc}") from None
    try:
        _prepare(document, ExportTraceServiceRequest.DESCRIPTOR, "$")
        return json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except OTLPDecodeError:
        raise
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise OTLPDecodeError(f"not an OTLP JSON ExportTraceServiceRequest: {exc}") from None


#: JSON objects and arrays longer than this are split into their members (``_loads``); at most this deep.
_SPLIT_BYTES = 64 * 1024
_SPLIT_DEPTH = 8
_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_elements = msgspec.json.Decoder(list[msgspec.Raw]).decode


def _loads(body: bytes) -> Any:
    """``json.loads(body)``, as pieces of at most ``_SPLIT_BYTES`` each parsed by one ``json.loads`` call (so
    the GIL changes hands between them). Anything the splitting scan does not take (invalid JSON, another
    encoding than UTF-8) goes to one ``json.loads`` of the whole body: its result or error, as before."""
    try:
        return _split(body, 0)
    except msgspec.DecodeError:
        return json.loads(body)


def _split(raw: bytes, depth: int) -> Any:
    if len(raw) > _SPLIT_BYTES and depth < _SPLIT_DEPTH:
        head = raw.lstrip()[:1]
        if head == b"{":
            return {key: _split(bytes(value), depth + 1) for key, value in _members(raw).items()}
        if head == b"[":
            return [_split(bytes(value), depth + 1) for value in _elements(raw)]
    return json.loads(raw)


def encode_response(rejected_spans: int, error_message: str, encoding: Encoding) -> bytes:
    """The success body: ``partial_success`` is set only when spans were rejected or there is a message."""
    response = ExportTraceServiceResponse()
    if rejected_spans or error_message:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected_spans, error_message=error_message)
        )
    if encoding == PROTOBUF:
        return response.SerializeToString()
    return json.dumps(json_format.MessageToDict(response), separators=(",", ":")).encode()


def encode_status(code: int, message: str) -> bytes:
    """A binary ``google.rpc.Status`` (``code`` = 1, ``message`` = 2): the OTLP error body for protobuf.

    Written by hand because it is two fields; tests check it against googleapis' own message.
    """
    out = bytearray()
    if code:
        out += b"\x08" + _varint(code)
    text = message.encode()
    if text:
        out += b"\x12" + _varint(len(text)) + text
    return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _prepare(value: object, message: Descriptor, where: str) -> None:
    """Check that every message of the document is an object and every repeated message a list of them,
    and rewrite hex ids as the base64 the proto3 JSON parser expects. (json_format alone would take a
    string where a message belongs as an object with unknown keys, and so silently as an empty one.)
    """
    if not isinstance(value, dict):
        raise OTLPDecodeError(f"{where} must be a JSON object ({message.name})")
    for key, item in value.items():
        field = message.fields_by_camelcase_name.get(key) or message.fields_by_name.get(key)
        if field is None or item is None:
            continue  # unknown fields are ignored; null is the default value
        if field.name in _ID_FIELDS and field.type == field.TYPE_BYTES:
            value[key] = _hex_to_base64(item, f"{where}.{key}")
        elif field.message_type is not None and not _repeated(field):
            _prepare(item, field.message_type, f"{where}.{key}")
        elif field.message_type is not None:
            if not isinstance(item, list):
                raise OTLPDecodeError(f"{where}.{key} must be a JSON array")
            for index, element in enumerate(item):
                _prepare(element, field.message_type, f"{where}.{key}[{index}]")


def _repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; older releases have ``label``
    return bool(repeated) if repeated is not None else bool(getattr(field, "label") == 3)  # noqa: B009


def _hex_to_base64(value: object, where: str) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise OTLPDecodeError(f"{where} must be a hex string (OTLP JSON), got {value!r:.60}")
    return base64.b64encode(bytes.fromhex(value)).decode()
