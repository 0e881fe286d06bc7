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
from aiohttp.test_utils import TestClient
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
#: Numbers at the edges: huge (finite) floats and integers past 64 bits are where arithmetic overflows.
_edges = st.sampled_from(
    [0, -0.0, 0.5, 1.5, -1, 2**53 + 1, 2**63, 2**64, 2**70, 1e15, 1e20, 1e300, 1.7976931348623157e308]
)
_numbers = _edges | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
_times = st.sampled_from(
    [
        "2026-03-15T14:23:01.441Z",
        "2026-13-45T99:99:99Z",
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
        "0999-12-31T23:59:59+14:00",
        "",
        "now",
    ]
) | st.datetimes().map(lambda d: d.isoformat())
_field_values = {
    "trace_id": st.text(max_size=40) | _json,
    "span_id": st.text(max_size=40) | _json,
    "parent_span_id": st.none() | st.text(max_size=40) | _json,
    "name": st.text(max_size=20) | _json,
    "model": st.text(max_size=8) | _json,
    "provider": st.text(max_size=8) | _json,
    "prompt_tokens": _numbers | _json,
    "comp_tokens": _numbers | _json,
    "total_tokens": _numbers | _json,
    "cost_usd": _numbers | _json,
    "latency_ms": _numbers | _json,
    "status": st.sampled_from(["ok", "error", "timeout", "OK", ""]) | _json,
    "error": st.none() | st.text(max_size=20) | _json,
    "caller": st.text(max_size=8) | _json,
    "started_at": _times | _json,
    "ended_at": _times | _json,
    "attributes": st.dictionaries(st.sampled_from(["eval.score", "workflow", "x"]), _numbers | _json, max_size=3)
    | _json,
}
_mutation = st.one_of(*(st.tuples(st.just(name), values) for name, values in _field_values.items()))
#: A valid span with one or two fields replaced by something odd: each oddity reaches deep into ingest.
_almost_span = st.builds(
    lambda base, mutations: {**base, **dict(mutations)},
    st.fixed_dictionaries(
        {"model": st.sampled_from(["gpt-4o", "unknown-model"]), "prompt_tokens": st.integers(0, 10**6)}
    ),
    st.lists(_mutation, min_size=1, max_size=2),
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


#: Spans that reached a 500 before (found by this module): each must be a 400, or be accepted without
#: breaking a single read afterwards.
EDGE_SPANS: dict[str, dict[str, Any]] = {
    "tokens-past-64-bits": {"model": "gpt-4o", "prompt_tokens": 2**64},
    "tokens-1e300": {"model": "gpt-4o", "prompt_tokens": 1e300},
    "cost-1e308": {"model": "gpt-4o", "total_tokens": 1, "cost_usd": 1e308},
    "cost-past-64-bits": {"model": "unknown-model", "prompt_tokens": 208, "cost_usd": 2**64},
    "latency-1e20": {"model": "m", "total_tokens": 1, "latency_ms": 1e20},
    "latency-1e308": {"model": "m", "total_tokens": 1, "latency_ms": 1e308},
    "score-1e308": {"model": "m", "total_tokens": 1, "attributes": {"eval.score": 1e308}},
    "ended-at-minus-huge-latency": {
        "model": "m",
        "total_tokens": 1,
        "ended_at": "2026-11-25T19:00:00Z",
        "latency_ms": 1e15,
    },
    "started-year-1": {"model": "m", "total_tokens": 1, "started_at": "0001-10-01T00:00:00Z"},
    "ended-year-564": {"model": "m", "total_tokens": 1, "ended_at": "0564-12-11T04:17:58Z"},
    "started-year-999-east-of-utc": {"model": "m", "total_tokens": 1, "started_at": "1000-01-01T05:00:00+14:00"},
    "started-year-9999": {"model": "m", "total_tokens": 1, "started_at": "9999-12-31T23:59:59Z"},
    "model-with-the-series-separator": {"model": "sep\x1fmodel", "provider": "p", "total_tokens": 1},
    "caller-with-the-series-separator": {"model": "m", "caller": "a\x1fb\x1fc", "total_tokens": 1},
}
READS = ["/metrics", "/metrics?groupby=provider", "/metrics/prometheus", "/traces", "/traces/recent", "/health"]


@pytest.mark.parametrize("span", list(EDGE_SPANS.values()), ids=list(EDGE_SPANS))
async def test_edge_values_are_a_400_or_harmless(client: TestClient[Any, Any], span: dict[str, Any]) -> None:
    """Each on a fresh server (aiohttp's test server over a new store), so one poison cannot hide another."""
    posted = await client.post("/spans", data=_encode(span))
    body = await posted.read()
    assert_envelope(posted.status, posted.content_type, body, f"POST /spans {span}")
    assert posted.status in (202, 400), body
    for target in READS:
        read = await client.get(target)
        assert read.status == 200, f"after POST /spans {span} ({posted.status}): GET {target} -> {read.status}"


async def test_names_with_the_series_separator_stay_whole(client: TestClient[Any, Any]) -> None:
    """A model name holding the internal separator must not be split into model and provider."""
    span = {"model": "whole\x1fname", "provider": "prov", "total_tokens": 1}
    if (await client.post("/spans", data=_encode(span))).status == 400:
        return
    by_provider = (await (await client.get("/metrics?groupby=provider")).json())["by_provider"]
    assert "name" not in by_provider and "prov" in by_provider, sorted(by_provider)


def test_a_failed_ingest_leaves_no_poison_in_the_log(tmp_path: Path) -> None:
    """A batch answered 500 was already in the write-ahead log: after kill -9 its replay failed again, so
    the server could not start any more. Whatever the answer, a restart after kill -9 must work."""
    process = ServerProcess(tmp_path / "data")
    process.start()
    try:
        _raw(process, "POST", "/spans", _encode(EDGE_SPANS["cost-1e308"]))
        _raw(process, "POST", "/spans", _encode({"model": "gpt-4o", "total_tokens": 5}))
        process.kill()
        process.start()
        health = json.loads(_raw(process, "GET", "/health")[2])
        assert health["status"] == "ok" and health["span_count"] >= 1
    finally:
        process.stop()


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
