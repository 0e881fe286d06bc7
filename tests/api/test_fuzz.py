"""Malformed-input fuzzing against a real ``tokentrace serve``: never a 5xx, every error is ``{"error": str}``.

Two passes, both deterministic (hypothesis ``derandomize``) and bounded in examples:

- schemathesis over the OpenAPI document, positive and negative cases for every operation, with its
  status-code, content-type and response-schema conformance checks;
- hypothesis garbage: arbitrary bytes as ``POST /spans`` bodies, JSON-ish values that are almost spans,
  arbitrary query strings on every ``GET`` and arbitrary paths and methods, sent raw with ``http.client``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from .server_process import ServerProcess
from .test_openapi import load_document

#: Examples per operation and generation mode, and per garbage test; keeps the module well under 60 s.
#: ``TOKENTRACE_FUZZ_EXAMPLES=2000`` runs a deeper pass by hand.
EXAMPLES = int(os.environ.get("TOKENTRACE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: A request that breaks the document must get a 4xx, except where the server ignores what is broken: a
#: mutated ``attr.{key}`` name on ``GET /traces`` is just an unknown query parameter, which every route ignores.
STRICT_INPUT = [negative_data_rejection]
LENIENT_INPUT = {"GET /traces"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server under fuzz; alert rounds are a day apart, so fuzzed webhook URLs are never called."""
    work = tmp_path_factory.mktemp("fuzz")
    config = work / "tokentrace.yml"
    config.write_text("alerting: {interval: 24h}\n")
    process = ServerProcess(work / "data", config=config)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def assert_envelope(status: int, content_type: str, body: bytes, what: str) -> None:
    """No 5xx; a 4xx is JSON ``{"error": "<non-empty text>"}`` and nothing else."""
    assert status < 500, f"{what}: {status} {body[:500]!r}"
    if status >= 400:
        assert content_type.startswith("application/json"), f"{what}: {status} with {content_type}"
        decoded = json.loads(body)
        assert isinstance(decoded, dict) and set(decoded) == {"error"}, f"{what}: {body[:500]!r}"
        assert isinstance(decoded["error"], str) and decoded["error"], f"{what}: {body[:500]!r}"


# ---------------------------------------------------------------------------------------- schemathesis

_DOCUMENT = load_document()
_SCHEMA = schemathesis.openapi.from_dict(_DOCUMENT)


def _breakable(op: dict[str, Any]) -> bool:
    """Whether negative cases exist: a body, or a parameter with more than a free string path segment."""
    params = [
        _DOCUMENT["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
        for p in op.get("parameters", [])
    ]
    return "requestBody" in op or any(p["in"] != "path" or p["schema"] != {"type": "string"} for p in params)


#: Every operation (``tokentrace serve`` runs alerting), each with the generation modes that apply.
CASES = sorted(
    (f"{method.upper()} {path}", mode)
    for path, item in _DOCUMENT["paths"].items()
    for method, op in item.items()
    if method in {"get", "post", "put", "delete", "patch"}
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _breakable(op)
)


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode}" for label, mode in CASES])
def test_schemathesis(server: ServerProcess, session: requests.Session, label: str, mode: GenerationMode) -> None:
    operation = _SCHEMA.find_operation_by_label(label)
    assert operation is not None, label

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=server.url, session=session, timeout=10)
        strict = mode is GenerationMode.NEGATIVE and label not in LENIENT_INPUT
        case.validate_response(response, checks=CHECKS + STRICT_INPUT if strict else CHECKS)
        content_type = ",".join(response.headers.get("content-type", []))
        assert_envelope(response.status_code, content_type, response.content, label)

    run()


# --------------------------------------------------------------------------------------------- garbage


def _raw(
    server: ServerProcess, method: str, target: str, body: bytes | None = None, timeout: float = 10
) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
)
_SPAN_FIELDS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "model",
    "provider",
    "prompt_tokens",
    "comp_tokens",
    "total_tokens",
    "cost_usd",
    "latency_ms",
    "status",
    "error",
    "caller",
    "started_at",
    "ended_at",
    "attributes",
]
_numbers = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
_times = st.sampled_from(
    ["2026-03-15T14:23:01.441Z", "2026-13-45T99:99:99Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "", "now"]
) | st.datetimes().map(lambda d: d.isoformat())
_field_values = {
    **{name: _json for name in _SPAN_FIELDS},
    "model": st.text(max_size=8) | _json,
    "prompt_tokens": _numbers | _json,
    "comp_tokens": _numbers | _json,
    "total_tokens": _numbers | _json,
    "cost_usd": _numbers | _json,
    "latency_ms": _numbers | _json,
    "status": st.sampled_from(["ok", "error", "timeout", "OK", ""]) | _json,
    "started_at": _times | _json,
    "ended_at": _times | _json,
    "attributes": st.dictionaries(st.sampled_from(["eval.score", "workflow", "x"]), _numbers | _json, max_size=3)
    | _json,
}
_almost_span = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o", "unknown-model"]), "prompt_tokens": st.integers(0, 10**6)},
    optional={name: _field_values[name] for name in _SPAN_FIELDS if name not in {"model", "prompt_tokens"}},
)


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@FUZZ
@given(body=st.binary(max_size=512))
def test_garbage_bytes_to_post_spans(server: ServerProcess, body: bytes) -> None:
    assert_envelope(*_raw(server, "POST", "/spans", body), f"POST /spans {body!r}")


@FUZZ
@given(spans=st.lists(_almost_span, min_size=1, max_size=5) | _almost_span)
def test_almost_spans_to_post_spans(server: ServerProcess, spans: Any) -> None:
    body = _encode(spans)
    assert_envelope(*_raw(server, "POST", "/spans", body), f"POST /spans {body!r}")


_GET_PATHS = [
    "/metrics",
    "/metrics/cost",
    "/metrics/latency_p99_ms",
    "/metrics/nope",
    "/metrics/prometheus",
    "/traces",
    "/traces/recent",
    "/traces/some-id",
    "/health",
]
_param_names = st.sampled_from(
    ["window", "groupby", "limit", "offset", "since", "until", "status", "model", "caller", "attr.workflow", "attr."]
) | st.text(max_size=10)
_param_values = (
    st.sampled_from(["1h", "30d", "31d", "0s", "-1h", "1e9h", "1h30m", "__series__", "model", "9" * 30, "", "NaN"])
    | st.text(max_size=30)
    | st.integers().map(str)
)


@FUZZ
@given(
    path=st.sampled_from(_GET_PATHS),
    params=st.lists(st.tuples(_param_names, _param_values), max_size=4),
)
def test_garbage_query_strings(server: ServerProcess, path: str, params: list[tuple[str, str]]) -> None:
    target = f"{path}?{urllib.parse.urlencode(params)}"
    assert_envelope(*_raw(server, "GET", target), f"GET {target}")


_segment = st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"), max_size=12).map(
    lambda s: urllib.parse.quote(s, safe="")
)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    root=st.sampled_from(["", "/metrics", "/traces", "/spans", "/alerts", "/health", "/openapi.json"]),
    segments=st.lists(_segment, max_size=3),
    body=st.none() | st.binary(max_size=64),
)
def test_garbage_paths_and_methods(
    server: ServerProcess, method: str, root: str, segments: list[str], body: bytes | None
) -> None:
    target = "/".join([root, *segments]) or "/"
    status, content_type, payload = _raw(server, method, target, body)
    if method == "HEAD":  # no body to check
        assert status < 500, f"HEAD {target}: {status}"
        return
    assert_envelope(status, content_type, payload, f"{method} {target}")


@pytest.mark.parametrize(
    "span",
    [
        {"model": "m", "total_tokens": 1, "started_at": "0001-10-01T00:00:00Z"},
        {"model": "m", "total_tokens": 1, "ended_at": "0564-12-11T04:17:58Z"},
        {"model": "m", "total_tokens": 1, "started_at": "9999-12-31T23:59:59Z"},
    ],
    ids=["started-year-1", "ended-year-564", "started-year-9999"],
)
def test_timestamps_far_from_now_are_a_400(server: ServerProcess, span: dict[str, Any]) -> None:
    """Found by the fuzz pass: a year before 1000 was a 500 (formatted without zero padding, then re-parsed)."""
    status, content_type, body = _raw(server, "POST", "/spans", _encode(span))
    assert_envelope(status, content_type, body, f"POST /spans {span}")
    assert status == 400, body


@pytest.mark.parametrize("duration", [1e300, "99999999999999999h", 1.2890799045178532e16])
def test_silences_far_in_the_future_are_valid_or_a_400(server: ServerProcess, duration: float | str) -> None:
    """Found by the fuzz pass: ``silenced_until`` overflowed (500) or left RFC 3339 (a 9-digit year)."""
    rule = {"name": "silence-me", "metric": "error_rate", "op": "gt", "threshold": 0.5}
    created = _raw(server, "POST", "/alerts", _encode(rule))
    assert created[0] in (201, 409), created
    status, content_type, body = _raw(server, "POST", "/alerts/silence-me/silence", _encode({"duration": duration}))
    assert_envelope(status, content_type, body, f"silence for {duration!r}")
    if status == 200:
        until = json.loads(body)["silenced_until"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", until), until
    else:
        assert status == 400, body


def test_a_rule_window_beyond_retention_does_not_stall_the_server(tmp_path: Path) -> None:
    """Found by hand after the fuzz pass: a rule with ``window: 1e300`` was accepted, and the next evaluation
    round walked the timeline day by day from 1e300 seconds ago, holding the event loop forever."""
    config = tmp_path / "tokentrace.yml"
    config.write_text("alerting: {interval: 1s}\n")
    process = ServerProcess(tmp_path / "data", config=config)
    process.start()
    try:
        rule = {"name": "forever", "metric": "error_rate", "op": "gt", "threshold": 0.5, "window": 1e300}
        status, content_type, body = _raw(process, "POST", "/alerts", _encode(rule))
        assert_envelope(status, content_type, body, "POST /alerts with window 1e300")
        time.sleep(2.5)  # at least one evaluation round
        assert _raw(process, "GET", "/health", timeout=5)[0] == 200
    finally:
        process.stop()


def test_server_log_has_no_unhandled_error(server: ServerProcess) -> None:
    """Run last in the module: the server logged no traceback while being fuzzed."""
    log = Path(server.log).read_text()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
