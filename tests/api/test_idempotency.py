"""``Idempotency-Key`` on ``POST /spans`` and ``/mist``: a retried batch is answered 202 again, counted once.

The key is durable with its batch (in the same log record), so it is recognised after a restart too, and the
SDK's retries after a ``kill -9`` that lost a 202 do not double-count.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.lossy_proxy import LossyProxy
from tests.api.server_process import ServerProcess
from tests.api.stores.test_embedded_durability import open_store, spans
from tests.api.test_contract_mist import message, payload
from tokentrace.api.stores.embedded import EmbeddedSettings, EmbeddedStore
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.producers import HTTPTransport, Reporter


async def total(client: TestClient[Any, Any]) -> int:
    return int((await (await client.get("/metrics/total_spans?window=1h")).json())["value"])


def batch(trace_id: str, n: int = 3) -> list[dict[str, Any]]:
    start = format_ms(now_ms() - 1000)
    return [{"trace_id": trace_id, "model": "m", "prompt_tokens": 1, "started_at": start} for _ in range(n)]


async def test_a_retried_batch_is_answered_again_and_counted_once(client: TestClient[Any, Any]) -> None:
    for _ in range(3):
        response = await client.post("/spans", json=batch("t1"), headers={"Idempotency-Key": "batch-1"})
        assert response.status == 202 and await response.json() == {"accepted": 3}
    assert await total(client) == 3
    await client.post("/spans", json=batch("t2"), headers={"Idempotency-Key": "batch-2"})
    await client.post("/spans", json=batch("t3"))
    await client.post("/spans", json=batch("t3"))  # no key: counted every time, as before
    assert await total(client) == 12


async def test_a_retried_mist_message_is_counted_once(client: TestClient[Any, Any]) -> None:
    body = message(payload("m1"))
    for _ in range(2):
        response = await client.post("/mist", data=body, headers={"Idempotency-Key": "mist-1"})
        assert response.status == 202
    assert await total(client) == 1


@pytest.mark.parametrize("key", ["", "k" * 256, "tab\there"])
async def test_a_malformed_key_is_a_400(client: TestClient[Any, Any], key: str) -> None:
    response = await client.post("/spans", json=batch("t"), headers={"Idempotency-Key": key})
    assert response.status == 400 and "Idempotency-Key" in (await response.json())["error"]
    assert await total(client) == 0


async def test_keys_survive_a_restart_from_the_log_and_from_a_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "d"
    store = await open_store(data)
    await store.ingest(spans("a", 2), "key-a")
    crashed = store  # no close: the key is only in the log
    store = await open_store(data)
    await store.ingest(spans("a", 2), "key-a")
    assert store.span_total == 2
    await store.ingest(spans("b", 2), "key-b")
    await store.close()  # now in a snapshot
    await crashed.close()
    store = await open_store(data)
    await store.ingest(spans("a", 2), "key-a")
    await store.ingest(spans("b", 2), "key-b")
    assert store.span_total == 4
    await store.close()


async def test_a_retry_while_the_original_is_being_written_is_counted_once(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "d")
    await asyncio.gather(*(store.ingest(spans("same", 5), "one-key") for _ in range(10)))
    assert store.span_total == 5
    await store.close()


async def test_keys_are_forgotten_after_the_window_and_beyond_the_cap(tmp_path: Path) -> None:
    settings = EmbeddedSettings(maintenance_interval_s=3600, idempotency_window_ms=60_000, idempotency_max_keys=3)
    store = EmbeddedStore(tmp_path / "d", settings)
    await store.open()
    for n in range(4):
        await store.ingest(spans(f"t{n}"), f"k{n}")
    assert list(store.idempotency_keys) == ["k1", "k2", "k3"], "the oldest key goes first beyond the cap"
    store.idempotency_keys["k1"] -= 61_000  # accepted more than a window ago
    store.maintain_now()
    assert list(store.idempotency_keys) == ["k2", "k3"]
    await store.ingest(spans("t1"), "k1")
    assert store.span_total == 5
    await store.close()


def unique_spans(n: int) -> list[Span]:
    start = format_ms(now_ms() - 1000)
    return [Span(trace_id=f"t-{i}", model="m", prompt_tokens=1, started_at=start) for i in range(n)]


def test_sdk_retries_after_a_lost_202_count_every_span_once(tmp_path: Path) -> None:
    """A proxy replaces every third 202 by a 502: the SDK retries batches the server already counted."""
    server = ServerProcess(tmp_path / "data")
    server.start()
    proxy = LossyProxy(server.url).start()
    sent = unique_spans(600)
    transport = HTTPTransport(proxy.url, batch_size=20, flush_interval=0.01, max_queue=len(sent), backoff=0.01)
    reporter = Reporter("app", proxy.url, backoff=0.01)
    try:
        transport.send(sent)
        transport.flush(60)
        reporter.report_many(unique_spans(30))
        reporter.flush(60)
        assert proxy.lost >= 10
        assert transport.stats().sent == len(sent) and reporter.stats().sent == 30
        with urllib.request.urlopen(f"{server.url}/metrics/total_spans?window=1h", timeout=10) as response:
            assert json.loads(response.read())["value"] == len(sent) + 30
    finally:
        transport.close()
        reporter.close()
        proxy.stop()
        server.stop()


@pytest.mark.slow
def test_sdk_retries_across_kill_9_count_every_span_exactly_once(tmp_path: Path) -> None:
    """Four SDK transports stream while the server is killed three times: batches made durable whose 202 was
    lost to a kill are retried with their key, and none is counted twice.

    The stream runs until the last restart, and each kill waits until the transports have delivered since the
    previous one, so every kill lands mid-stream however fast or slow the machine is.
    """
    server = ServerProcess(tmp_path / "data")
    server.start()
    transports = [
        HTTPTransport(server.url, batch_size=50, flush_interval=0.01, max_queue=100_000, max_retries=100, backoff=0.05)
        for _ in range(4)
    ]
    kills_done = threading.Event()
    streamed = [0] * 4

    def stream(k: int) -> None:
        start = format_ms(now_ms() - 1000)
        while not kills_done.is_set() or streamed[k] < 5_000:
            chunk = [
                Span(trace_id=f"t-{k}-{streamed[k] + i}", model="m", prompt_tokens=1, started_at=start)
                for i in range(50)
            ]
            transports[k].send(chunk)
            streamed[k] += len(chunk)
            time.sleep(0.002)

    def delivered() -> int:
        return sum(t.stats().sent for t in transports)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(3):
            before = delivered()
            deadline = time.monotonic() + 60
            while delivered() < before + 2_000:  # the server is up and batches are flowing
                assert time.monotonic() < deadline, "the transports delivered nothing after a restart"
                time.sleep(0.01)
            server.kill()  # mid-stream: some batches are durable, their 202 never arrives
            server.start()
        kills_done.set()
        for thread in threads:
            thread.join()
        for transport in transports:
            transport.flush(120)
        assert delivered() == sum(streamed)
        assert sum(t.stats().retries for t in transports) > 0, "the kills made the SDK retry"
        with urllib.request.urlopen(f"{server.url}/metrics/total_spans?window=1h", timeout=10) as response:
            assert json.loads(response.read())["value"] == sum(streamed)
    finally:
        kills_done.set()
        for transport in transports:
            transport.close()
        server.stop()
