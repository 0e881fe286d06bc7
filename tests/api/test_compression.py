"""Gzip of JSON answers: the compressed bytes as sent, against the identity answer of the same request."""

from __future__ import annotations

import gzip
import json
import random
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tokentrace.api.compression import INLINE_BYTES, MIN_BYTES, accepts_gzip
from tokentrace.core.timefmt import format_ms, now_ms

MINUTE = 60_000


def spans(now: int, count: int = 600) -> list[dict[str, Any]]:
    rng = random.Random(5)
    return [
        {
            "trace_id": f"gz-{i}",
            "name": "call",
            "model": rng.choice(["gpt-4o", "gpt-4o-mini", "claude-3-5-haiku"]),
            "provider": "openai",
            "prompt_tokens": rng.randrange(1, 4000),
            "comp_tokens": rng.randrange(0, 500),
            "cost_usd": round(rng.uniform(0, 0.05), 6),
            "latency_ms": round(rng.uniform(10, 5000), 1),
            "status": "ok",
            "started_at": format_ms(now - rng.randrange(23 * 60 * MINUTE) - 1),
        }
        for i in range(count)
    ]


async def raw_get(
    client: TestClient[Any, Any], path: str, encoding: str | None
) -> tuple[aiohttp.ClientResponse, bytes]:
    """The answer as sent on the wire (not inflated by the client)."""
    headers = {"Accept-Encoding": encoding} if encoding is not None else {"Accept-Encoding": "identity"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(str(client.make_url(path)), headers=headers) as response,
    ):
        return response, await response.read()


@pytest.fixture
async def loaded(client: TestClient[Any, Any]) -> TestClient[Any, Any]:
    response = await client.post("/spans", json=spans(now_ms()))
    assert response.status == 202, await response.text()
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/metrics/series?window=1h&step=1m&groupby=model",
        "/metrics/series?window=12h&step=1m&groupby=model",  # past INLINE_BYTES: compressed in a thread
        "/traces/recent?limit=100",
    ],
)
async def test_big_json_is_gzipped_for_clients_that_accept_it(loaded: TestClient[Any, Any], path: str) -> None:
    plain, plain_body = await raw_get(loaded, path, None)
    packed, packed_body = await raw_get(loaded, path, "gzip, deflate, br")
    assert plain.status == packed.status == 200
    assert len(plain_body) >= MIN_BYTES
    assert "Content-Encoding" not in plain.headers
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["Content-Type"] == plain.headers["Content-Type"] == "application/json"
    assert "Accept-Encoding" in packed.headers["Vary"] and "Accept-Encoding" in plain.headers["Vary"]
    assert int(packed.headers["Content-Length"]) == len(packed_body) < len(plain_body) / 3
    assert json.loads(gzip.decompress(packed_body)) == json.loads(plain_body)
    if "12h" in path:
        assert len(plain_body) > INLINE_BYTES


async def test_small_answers_and_other_types_are_sent_as_they_are(loaded: TestClient[Any, Any]) -> None:
    health, body = await raw_get(loaded, "/health", "gzip")
    assert len(body) < MIN_BYTES and "Content-Encoding" not in health.headers
    json.loads(body)
    prometheus, text = await raw_get(loaded, "/metrics/prometheus", "gzip")
    assert prometheus.status == 200 and prometheus.content_type == "text/plain"
    assert "Content-Encoding" not in prometheus.headers and b"tokentrace_" in text
    refused, body = await raw_get(loaded, "/metrics/series?window=1h&step=1m&groupby=model", "gzip;q=0, br")
    assert "Content-Encoding" not in refused.headers and len(body) >= MIN_BYTES
    json.loads(body)


async def test_the_aiohttp_client_inflates_transparently(loaded: TestClient[Any, Any]) -> None:
    response = await loaded.get("/metrics/series?window=1h&step=1m&groupby=model", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert set((await response.json())["series"]) == {"gpt-4o", "gpt-4o-mini", "claude-3-5-haiku"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br, zstd", True),
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("*;q=0", False),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=0, *", False),
        ("br, *;q=0.1", True),
        ("identity", False),
        ("", False),
        ("deflate, br", False),
        ("gzip;q=bogus", False),
    ],
)
def test_accept_encoding_is_read_with_its_q_values(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


async def test_head_answers_the_headers_of_get(loaded: TestClient[Any, Any]) -> None:
    path = "/metrics/series?window=1h&step=1m&groupby=model"
    get, body = await raw_get(loaded, path, "gzip")
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.head(str(loaded.make_url(path)), headers={"Accept-Encoding": "gzip"}) as head,
    ):
        assert head.status == 200 and await head.read() == b""
        for name in ("Content-Type", "Content-Encoding", "Content-Length", "Vary"):
            assert head.headers[name] == get.headers[name], name
    assert int(get.headers["Content-Length"]) == len(body)
