"""``POST /spans`` of the usual body straight to the log and the aggregates (``compile_body``), seen over HTTP.

The usual batch (the SDKs' form, of series the label caps admitted) is compiled, not decoded; a server answers
and counts it exactly as one that decodes every body (``native.compile_json`` off): the same 202, metrics,
traces and totals, after a restart from the log too; an ``Idempotency-Key`` retry is counted once; a body the
compiled pass declines (a new series, a span to reject) goes the Python way and says what is wrong.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient
from tests.core.test_native import REQUIRED
from tokentrace.api.stores.embedded import EmbeddedStore
from tokentrace.core import native
from tokentrace.core.timefmt import format_ms, now_ms, parse_rfc3339_ms

pytestmark = [] if REQUIRED else [pytest.mark.skipif(native.compile_json is None, reason="compiled module not built")]

MODELS = (("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-5-haiku-20241022", "anthropic"))
CALLERS = ("chat", "search")


def usual_batch(rng: random.Random, size: int, *, days: int = 0) -> list[dict[str, Any]]:
    """Spans as the SDK sends them (ids, start, latency; no cost: the server prices them), over the last minute
    or the last ``days`` days."""
    now = now_ms()
    spans = []
    for _ in range(size):
        model, provider = rng.choice(MODELS)
        start = now - rng.randrange(60_000, max(120_000, days * 86_400_000))
        latency = round(rng.uniform(50, 3000), 1)
        attributes: dict[str, Any] = {"route": rng.choice(["a", "b", "c"]), "eval.score": round(rng.random(), 3)}
        spans.append(
            {
                "trace_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "span_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "name": "call",
                "model": model,
                "provider": provider,
                "prompt_tokens": rng.randrange(1, 5000),
                "comp_tokens": rng.randrange(0, 800),
                "latency_ms": latency,
                "status": rng.choice(["ok", "ok", "ok", "error", "timeout"]),
                "caller": rng.choice(CALLERS),
                "started_at": format_ms(start),
                "attributes": attributes,
            }
        )
    return spans


def count_compiled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets the size of each batch an embedded store takes compiled."""
    seen: list[int] = []
    original = EmbeddedStore.ingest_compiled

    async def counting(self: EmbeddedStore, wire: bytes, batch: Any, key: str | None = None) -> None:
        seen.append(len(batch))
        await original(self, wire, batch, key)

    monkeypatch.setattr(EmbeddedStore, "ingest_compiled", counting)
    return seen


async def answers(client: TestClient[Any, Any], trace_ids: list[str]) -> list[Any]:
    """What a user reads back: metrics over windows and dimensions, and traces."""
    read = [
        "/metrics?window=7d",
        "/metrics?window=30d",
        "/metrics?window=30d&groupby=model",
        "/metrics?window=30d&groupby=caller&model=gpt-4o",
        "/metrics?window=30d&groupby=route",
        "/metrics/total_spans?window=30d",
    ]
    found = [await (await client.get(path)).json() for path in read]
    for trace_id in trace_ids:
        found.append(await (await client.get(f"/traces/{trace_id}")).json())
    return found


async def test_the_usual_body_is_compiled_and_read_back_as_decoded(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    bodies = [usual_batch(rng, 200, days=3) for _ in range(6)]
    compiled = await make_client(data_dir=tmp_path / "compiled")
    seen = count_compiled(monkeypatch)
    for body in bodies:
        response = await compiled.post("/spans", json=body)
        assert response.status == 202 and await response.json() == {"accepted": 200}
    assert len(seen) >= 4, "the usual batches of admitted series were not compiled"
    with monkeypatch.context() as off:
        off.setattr(native, "compile_json", None)
        decoded = await make_client(data_dir=tmp_path / "decoded")
        for body in bodies:
            assert (await decoded.post("/spans", json=body)).status == 202
    trace_ids = [body[0]["trace_id"] for body in bodies]
    expected = await answers(decoded, trace_ids)
    assert await answers(compiled, trace_ids) == expected
    assert expected[-1]["spans"], "no trace read back"
    restarted = await make_client(data_dir=tmp_path / "compiled")  # its log, replayed (the first still holds it)
    assert await answers(restarted, trace_ids) == expected


async def test_a_retried_compiled_batch_is_counted_once(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(8)
    client = await make_client()
    seen = count_compiled(monkeypatch)
    assert (await client.post("/spans", json=usual_batch(rng, 50))).status == 202  # admits the series
    body = usual_batch(rng, 50)
    for _ in range(3):
        response = await client.post("/spans", json=body, headers={"Idempotency-Key": "batch-1"})
        assert response.status == 202 and await response.json() == {"accepted": 50}
    assert seen, "not compiled"
    total = await (await client.get("/metrics/total_spans?window=1h")).json()
    assert total["value"] == 100


async def test_what_the_compiled_pass_declines_is_decided_in_python(make_client: MakeClient) -> None:
    rng = random.Random(9)
    client = await make_client()
    assert (await client.post("/spans", json=usual_batch(rng, 10))).status == 202
    too_old = usual_batch(rng, 3)
    too_old[1]["started_at"] = format_ms(now_ms() - 400 * 86_400_000)
    response = await client.post("/spans", json=too_old)
    assert response.status == 400 and "span 1: started_at" in (await response.json())["error"]
    bad = usual_batch(rng, 3)
    bad[2]["prompt_tokens"] = -1
    response = await client.post("/spans", json=bad)
    assert response.status == 400 and "prompt_tokens" in (await response.json())["error"]
    total = await (await client.get("/metrics/total_spans?window=1h")).json()
    assert total["value"] == 10


async def test_a_back_fill_indexes_only_the_traces_within_the_trace_retention(make_client: MakeClient) -> None:
    """``storage.trace_retention`` (7d): a back-filled trace older than that is counted in the metrics but not
    kept for /traces (404, as the spec says of a trace outside the retention window), compiled or not."""
    rng = random.Random(10)
    client = await make_client()
    batches = [usual_batch(rng, 200, days=29) for _ in range(3)]
    for body in batches:
        assert (await client.post("/spans", json=body)).status == 202
    total = await (await client.get("/metrics/total_spans?window=30d")).json()
    assert total["value"] == 600
    horizon = now_ms() - 7 * 86_400_000
    found = {"kept": 0, "left out": 0}
    for span in (span for body in batches for span in body):
        started = parse_rfc3339_ms(span["started_at"])
        if abs(started - horizon) < 60_000:
            continue  # at the edge while the test runs
        status = (await client.get(f"/traces/{span['trace_id']}")).status
        assert status == (200 if started > horizon else 404)
        found["kept" if status == 200 else "left out"] += 1
    assert found["kept"] > 50 and found["left out"] > 300
