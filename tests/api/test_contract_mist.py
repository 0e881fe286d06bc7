"""POST /mist: MIST ``trace.span`` messages (README, "Seed 001 (MIST) compatibility"), every status code, the exact mapping onto a span, the checksum."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from tests.api.conftest import MakeClient
from tests.api.server_process import ServerProcess
from tests.api.stores.faulty_fs import FullDisk
from tests.api.test_fuzz import FUZZ, _raw, assert_envelope
from tests.api.test_openapi import assert_conforms
from tokentrace.api.context import CONTEXT
from tokentrace.api.embedded import price_table
from tokentrace.config import parse_config
from tokentrace.core.mist import MAX_MESSAGE_BYTES
from tokentrace.core.timefmt import format_ms

#: Written by the real mist-go (v0.1.0, ``protocol.New("infermux", "trace.span", span)`` then
#: ``MarshalWithChecksum``): its JSON escapes ``<``, ``>`` and ``&`` in the payload, and the checksum covers
#: those bytes. The span started 2025-11-25, so the server under test keeps ten years of aggregates.
GO_MESSAGE = (
    b'{"version":"1","id":"f0e1d2c3b4a5968778695a4b3c2d1e0f","source":"infermux","type":"trace.span",'
    b'"timestamp_ns":1764100001400000000,"payload":{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",'
    b'"span_id":"00f067aa0ba902b7","parent_id":"a2fb4a1d1a96d312","operation":"infer \\u003cchat\\u003e \\u0026 more",'
    b'"start_ns":1764100000123456789,"end_ns":1764100001373456789,"status":"ok","attrs":{"cost_usd":0.00448,'
    b'"model":"gpt-4o","provider":"openai","retries":2,"route":"primary","tokens_in":512,"tokens_out":128}},'
    b'"checksum":3748177616}'
)
TEN_YEARS = "storage: {retention: 3650d, trace_retention: 3650d}\n"


def now_ns() -> int:
    return time.time_ns()


def payload(trace_id: str = "t1", **fields: Any) -> dict[str, Any]:
    start = fields.pop("start_ns", now_ns() - 5_000_000_000)
    return {
        "trace_id": trace_id,
        "span_id": f"{trace_id}-s",
        "operation": "infer",
        "start_ns": start,
        "end_ns": fields.pop("end_ns", start + 1_000_000_000),
        "status": "ok",
        "attrs": {"model": "gpt-4o", "provider": "openai", "tokens_in": 10, "tokens_out": 5, "cost_usd": 0.01},
        **fields,
    }


def message(body: dict[str, Any] | bytes, *, checksum: int | None = -1, **envelope: Any) -> bytes:
    """A MIST message around ``body`` (kept byte for byte); ``checksum=-1`` computes the right one."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields = {"version": "1", "id": "m1", "source": "infermux", "type": "trace.span", "timestamp_ns": now_ns()}
    fields |= envelope
    if checksum == -1:
        checksum = zlib.crc32(raw)
    head = json.dumps(fields).encode()[:-1]
    tail = b"" if checksum is None else b',"checksum":' + str(checksum).encode()
    return head + b',"payload":' + raw + tail + b"}"


async def post(client: TestClient[Any, Any], body: bytes) -> tuple[int, Any]:
    response = await client.post("/mist", data=body)
    return response.status, await response.json()


async def stored(client: TestClient[Any, Any], trace_id: str) -> dict[str, Any]:
    response = await client.get(f"/traces/{trace_id}")
    assert response.status == 200, await response.text()
    spans: list[dict[str, Any]] = (await response.json())["spans"]
    assert len(spans) == 1
    return spans[0]


async def total_spans(client: TestClient[Any, Any]) -> int:
    count: int = (await (await client.get("/stats")).json())["total_spans"]
    return count


# ------------------------------------------------------------------------------------------------ 202


async def test_a_message_written_by_mist_go_is_accepted_and_mapped(make_client: MakeClient) -> None:
    client = await make_client(TEN_YEARS)
    status, body = await post(client, GO_MESSAGE)
    assert (status, body) == (202, {"accepted": 1})
    assert_conforms("/mist", "post", 202, body)
    span = await stored(client, "4bf92f3577b34da6a3ce929d0e0e4736")
    assert span == {
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "parent_span_id": "a2fb4a1d1a96d312",
        "name": "infer <chat> & more",
        "model": "gpt-4o",
        "provider": "openai",
        "prompt_tokens": 512,
        "comp_tokens": 128,
        "total_tokens": 640,
        "cost_usd": 0.00448,
        "latency_ms": 1250.0,
        "status": "ok",
        "error": None,
        "caller": "infermux",
        "started_at": "2025-11-25T19:46:40.123Z",
        "ended_at": "2025-11-25T19:46:41.373Z",
        "attributes": {"mist.operation": "infer <chat> & more", "retries": 2, "route": "primary"},
    }


async def test_latency_keeps_nanosecond_precision_and_other_attrs_are_kept(client: TestClient[Any, Any]) -> None:
    start = (now_ns() // 1_000_000 - 3000) * 1_000_000 + 456_789
    attrs = {
        "model": "claude-3-5-haiku-20241022",
        "provider": "anthropic",
        "tokens_in": 1200.0,
        "tokens_out": 0,
        "cost_usd": 0,
        "error": "rate limited",
        "nested": {"a": [1, 2]},
        "dropped": None,
        "eval.score": 0.5,
        "flag": True,
        "huge": 2**70,
    }
    body = payload("t2", start_ns=start, end_ns=start + 1_234_567_891, status="error", attrs=attrs, parent_id="")
    assert (await post(client, message(body, source="matchspec")))[0] == 202
    span = await stored(client, "t2")
    assert span["latency_ms"] == 1234.567891
    assert span["started_at"] == format_ms(start // 1_000_000)
    assert span["ended_at"] == format_ms((start + 1_234_567_891) // 1_000_000)
    assert (span["prompt_tokens"], span["comp_tokens"], span["total_tokens"]) == (1200, 0, 1200)
    assert (span["cost_usd"], span["status"], span["error"]) == (0, "error", "rate limited")
    assert (span["caller"], span["parent_span_id"], span["provider"]) == ("matchspec", None, "anthropic")
    assert span["attributes"] == {
        "mist.operation": "infer",
        "nested": '{"a":[1,2]}',
        "eval.score": 0.5,
        "flag": True,
        "huge": float(2**70),
    }


async def test_cost_absent_is_priced_like_post_spans(client: TestClient[Any, Any]) -> None:
    attrs = {"model": "gpt-4o", "provider": "openai", "tokens_in": 1000, "tokens_out": 500}
    assert (await post(client, message(payload("priced", attrs=attrs))))[0] == 202
    same = {"trace_id": "native", "model": "gpt-4o", "provider": "openai", "prompt_tokens": 1000, "comp_tokens": 500}
    assert (await client.post("/spans", json=same)).status == 202
    expected = price_table(parse_config("")).cost("gpt-4o", 1000, 500, provider="openai")
    assert expected is not None and expected > 0
    assert (await stored(client, "priced"))["cost_usd"] == (await stored(client, "native"))["cost_usd"] == expected


async def test_unknown_or_missing_model_and_no_tokens(client: TestClient[Any, Any]) -> None:
    unknown = payload("u1", attrs={"model": "my-own-model", "tokens_in": 7})
    bare = payload("u2", operation="eval.run", attrs=None, span_id="")
    for body in (unknown, bare):
        assert (await post(client, message(body)))[0] == 202
    first, second = await stored(client, "u1"), await stored(client, "u2")
    assert (first["model"], first["cost_usd"], first["prompt_tokens"]) == ("my-own-model", None, 7)
    assert (second["model"], second["cost_usd"], second["total_tokens"]) == ("unknown", None, 0)
    assert second["span_id"] and second["name"] == "eval.run"
    stats = await (await client.get("/stats")).json()
    assert stats["unpriced_span_count"] == 2 and stats["total_cost_usd"] == 0


async def test_statuses(client: TestClient[Any, Any]) -> None:
    for status in ("ok", "error", "timeout", "", "cancelled", "ERROR"):
        assert (await post(client, message(payload(f"s-{status}", status=status))))[0] == 202
    spans = {s: await stored(client, f"s-{s}") for s in ("ok", "error", "timeout", "", "cancelled", "ERROR")}
    assert {s: span["status"] for s, span in spans.items()} == {
        "ok": "ok",
        "error": "error",
        "timeout": "timeout",
        "": "ok",
        "cancelled": "ok",
        "ERROR": "ok",
    }
    assert spans["cancelled"]["attributes"]["mist.status"] == "cancelled"
    assert spans["ERROR"]["attributes"]["mist.status"] == "ERROR"
    assert "mist.status" not in spans[""]["attributes"] and "mist.status" not in spans["ok"]["attributes"]
    stats = await (await client.get("/stats")).json()
    assert (stats["total_spans"], stats["error_count"]) == (6, 1)


async def test_timestamps_unset(client: TestClient[Any, Any]) -> None:
    before = int(time.time() * 1000)
    assert (await post(client, message(payload("none", start_ns=0, end_ns=0))))[0] == 202
    start = now_ns() - 2_000_000_000
    assert (await post(client, message(payload("open", start_ns=start, end_ns=0))))[0] == 202
    none, open_ = await stored(client, "none"), await stored(client, "open")
    assert none["latency_ms"] is None and none["started_at"] >= format_ms(before)
    assert open_["latency_ms"] is None and open_["started_at"] == format_ms(start // 1_000_000)


# ------------------------------------------------------------------------------------------- checksum


async def test_checksum_absent_zero_null_or_right_is_accepted(client: TestClient[Any, Any]) -> None:
    for i, checksum in enumerate((None, 0, -1)):
        assert (await post(client, message(payload(f"c{i}"), checksum=checksum)))[0] == 202
    nulled = message(payload("c-null"), checksum=None)[:-1] + b',"checksum":null}'
    assert (await post(client, nulled))[0] == 202


async def test_checksum_covers_the_payload_bytes_as_sent(client: TestClient[Any, Any]) -> None:
    spaced = json.dumps(payload("ws"), indent=2).encode()
    compact = json.dumps(json.loads(spaced), separators=(",", ":")).encode()
    assert zlib.crc32(spaced) != zlib.crc32(compact)
    status, body = await post(client, message(spaced, checksum=zlib.crc32(compact)))
    assert status == 400 and "checksum mismatch" in body["error"]
    assert (await post(client, message(spaced, checksum=zlib.crc32(spaced))))[0] == 202


async def test_a_corrupted_payload_fails_its_checksum(make_client: MakeClient) -> None:
    client = await make_client(TEN_YEARS)
    status, body = await post(client, GO_MESSAGE.replace(b'"tokens_in":512', b'"tokens_in":513'))
    assert status == 400
    assert body == {"error": "checksum mismatch: message says 3748177616, payload has 3121585558"}
    assert_conforms("/mist", "post", 400, body)
    assert await total_spans(client) == 0


# ------------------------------------------------------------------------------------------------ 400

NOW = time.time_ns()
GOOD = payload("bad", start_ns=NOW - 1_000_000_000, end_ns=NOW)
BAD_MESSAGES: dict[str, tuple[bytes, str]] = {
    "empty body": (b"", "malformed JSON"),
    "not JSON": (b"{nope", "malformed JSON"),
    "an array": (b"[]", "invalid MIST envelope"),
    "wrong type": (message(GOOD, type="health.ping"), "expected type 'trace.span', got 'health.ping'"),
    "version 2": (message(GOOD, version="2"), "unsupported MIST version '2'"),
    "version as a number": (message(GOOD, version=1), "`$.version`"),
    "no source": (message(GOOD, source=""), "source must not be empty"),
    "no id": (message(GOOD, id=""), "id must not be empty"),
    "no payload": (json.dumps({"version": "1", "id": "m", "source": "s", "type": "trace.span"}).encode(), "payload"),
    "checksum past 32 bits": (message(GOOD, checksum=2**32), "`$.checksum`"),
    "payload not an object": (message(b"[1]"), "invalid trace.span payload"),
    "payload without trace_id": (message({"span_id": "x"}), "missing required field `trace_id`"),
    "empty trace_id": (message({**GOOD, "trace_id": ""}), "payload.trace_id must not be empty"),
    "start_ns negative": (message({**GOOD, "start_ns": -1}), "`payload.start_ns`"),
    "start_ns as text": (message({**GOOD, "start_ns": "1"}), "`payload.start_ns`"),
    "end before start": (message({**GOOD, "end_ns": NOW - 2_000_000_000}), "is before payload.start_ns"),
    "end without start": (message({**GOOD, "start_ns": 0}), "payload.end_ns is set but payload.start_ns is 0"),
    "tokens as text": (message({**GOOD, "attrs": {"tokens_in": "5"}}), "`payload.attrs.tokens_in`"),
    "tokens negative": (message({**GOOD, "attrs": {"tokens_out": -1}}), "payload.attrs.tokens_out must be between"),
    "tokens fractional": (message({**GOOD, "attrs": {"tokens_in": 1.5}}), "payload.attrs.tokens_in must be a whole"),
    "tokens as bool": (message({**GOOD, "attrs": {"tokens_in": True}}), "`payload.attrs.tokens_in`"),
    "cost negative": (message({**GOOD, "attrs": {"tokens_in": 1, "cost_usd": -1}}), "payload.attrs.cost_usd"),
    "model not text": (message({**GOOD, "attrs": {"model": 5}}), "`payload.attrs.model`"),
    "source with a newline": (message(GOOD, source="a\nb"), "source must not contain control characters"),
    "score not a number": (message({**GOOD, "attrs": {"eval.score": "high"}}), "payload.attrs.eval.score"),
    "started in 1970": (message({**GOOD, "start_ns": 1, "end_ns": 2}), "older than the aggregate retention"),
    "started in the future": (message({**GOOD, "start_ns": NOW + 3600 * 10**9, "end_ns": 0}), "in the future"),
}


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
async def test_bad_messages_are_400_and_count_nothing(client: TestClient[Any, Any], name: str) -> None:
    body, fragment = BAD_MESSAGES[name]
    response = await client.post("/mist", data=body)
    assert response.status == 400, await response.text()
    error = await response.json()
    assert set(error) == {"error"} and fragment in error["error"], error
    assert_conforms("/mist", "post", 400, error)
    assert await total_spans(client) == 0
    rejected = client.app[CONTEXT].rejected
    assert sum(rejected.values()) == 1 and (rejected["invalid"] or rejected["too_old"] or rejected["future"])


# ------------------------------------------------------------------------------------------ 401, 413, 503


async def test_401_without_the_token(make_client: MakeClient) -> None:
    client = await make_client('http_server: {auth_token: "s3cret"}')
    response = await client.post("/mist", data=message(GOOD))
    assert response.status == 401
    assert_conforms("/mist", "post", 401, await response.json())
    ok = await client.post("/mist", data=message(GOOD), headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 202


async def test_413_above_the_configured_body_limit(make_client: MakeClient) -> None:
    client = await make_client("http_server: {max_body_bytes: 2000}")
    padded = message({**GOOD, "attrs": {"note": "x" * 2000}})
    status, body = await post(client, padded)
    assert status == 413 and "larger than 2000 bytes" in body["error"]
    assert_conforms("/mist", "post", 413, body)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for i in range(0, len(padded), 500):
            yield padded[i : i + 500]

    chunked = await client.post("/mist", data=chunks())
    assert chunked.status == 413
    assert (await post(client, message(GOOD)))[0] == 202
    assert client.app[CONTEXT].rejected["too_large"] == 2


async def test_413_above_the_mist_message_limit(client: TestClient[Any, Any]) -> None:
    assert MAX_MESSAGE_BYTES == 10 << 20  # mist-go's protocol.MaxMessageSize
    huge = message({**GOOD, "attrs": {"note": "x" * MAX_MESSAGE_BYTES}})
    status, body = await post(client, huge)
    assert status == 413 and f"larger than {MAX_MESSAGE_BYTES} bytes" in body["error"]


async def test_503_when_the_store_cannot_write(make_client: MakeClient, tmp_path: Any) -> None:
    client = await make_client(data_dir=tmp_path / "d")
    wal = client.app[CONTEXT].store._wal  # type: ignore[attr-defined]
    wal.fs = FullDisk()  # every write now fails (ENOSPC)
    status, body = await post(client, message(GOOD))
    assert status == 503 and "not accepted" in body["error"]
    assert_conforms("/mist", "post", 503, body)


# ------------------------------------------------------------------------------- /traces/recent (seed)


async def test_recent_spans_are_newest_first_and_capped_by_max_spans(make_client: MakeClient) -> None:
    client = await make_client("storage: {max_spans: 3}")
    base = now_ns() - 60_000_000_000
    for i in range(5):
        start = base + i * 1_000_000_000
        assert (await post(client, message(payload(f"r{i}", start_ns=start, end_ns=start + 10**6))))[0] == 202
    body = await (await client.get("/traces/recent", params={"limit": "10"})).json()
    assert [s["trace_id"] for s in body["spans"]] == ["r4", "r3", "r2"] and body["count"] == 3
    two = await (await client.get("/traces/recent", params={"limit": "2"})).json()
    assert [s["trace_id"] for s in two["spans"]] == ["r4", "r3"]
    # What was sent comes back in the seed's shape: a seed tool reads its own spans unchanged.
    assert two["spans"][0]["start_ns"] // 10**6 == (base + 4 * 10**9) // 10**6
    assert await total_spans(client) == 5  # aggregates are not capped


# -------------------------------------------------------------------------------------------- garbage

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_keys = ["trace_id", "span_id", "parent_id", "operation", "start_ns", "end_ns", "status", "attrs"]
_attr_keys = ["tokens_in", "tokens_out", "total_tokens", "cost_usd", "model", "provider", "error", "eval.score", "x"]
_envelope_keys = ["version", "id", "source", "type", "timestamp_ns", "checksum"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("mist-fuzz") / "data")
    process.start()
    yield process
    process.stop()


@FUZZ
@given(body=st.binary(max_size=300))
def test_garbage_bytes(server: ServerProcess, body: bytes) -> None:
    assert_envelope(*_raw(server, "POST", "/mist", body), f"POST /mist {body!r}")


@FUZZ
@given(
    payload_changes=st.dictionaries(st.sampled_from(_keys), _json, max_size=2),
    attr_changes=st.dictionaries(st.sampled_from(_attr_keys), _json, max_size=2),
    envelope_changes=st.dictionaries(st.sampled_from(_envelope_keys), _json, max_size=1),
)
def test_almost_valid_messages(
    server: ServerProcess,
    payload_changes: dict[str, Any],
    attr_changes: dict[str, Any],
    envelope_changes: dict[str, Any],
) -> None:
    """A valid message with a few odd values, checksummed right so every oddity reaches the mapping."""
    body = payload("fuzz")
    body["attrs"] = {**body["attrs"], **attr_changes}
    body |= payload_changes
    raw = json.dumps(body, allow_nan=True).encode()
    fields = {"version": "1", "id": "m", "source": "fuzz", "type": "trace.span", "checksum": zlib.crc32(raw)}
    fields |= envelope_changes
    text = json.dumps(fields, allow_nan=True).encode()[:-1] + b',"payload":' + raw + b"}"
    status, content_type, answer = _raw(server, "POST", "/mist", text)
    assert_envelope(status, content_type, answer, f"POST /mist {text!r}")
    assert status in (202, 400), answer
