"""A span acknowledged with 202 survives kill -9: it is counted exactly once after restart."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.api.server_process import ServerProcess
from tokentrace.core.timefmt import format_ms, now_ms

BATCH = 50


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def batch(trace_id: str) -> list[dict[str, Any]]:
    start = format_ms(now_ms() - 1000)
    return [
        {"trace_id": trace_id, "model": "gpt-4o", "prompt_tokens": 10, "comp_tokens": 1, "started_at": start}
        for _ in range(BATCH)
    ]


async def stream(server: ServerProcess, acked: list[str], sent: list[str], prefix: str, stop_after_s: float) -> None:
    """Post batches from 4 concurrent clients until the server dies; remember what got a 202."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stop_after_s

    async def client(worker: int) -> None:
        async with aiohttp.ClientSession() as session:
            n = 0
            while loop.time() < deadline:
                trace_id = f"{prefix}-w{worker}-{n}"
                n += 1
                sent.append(trace_id)
                try:
                    async with session.post(f"{server.url}/spans", json=batch(trace_id)) as response:
                        if response.status == 202:
                            acked.append(trace_id)
                except aiohttp.ClientError:
                    return

    await asyncio.gather(*(client(i) for i in range(4)))


@pytest.mark.slow
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    config = tmp_path / "tokentrace.yml"
    # Snapshots race with the stream. The trace index keeps every span sent: at its default of 100,000 it
    # evicted the oldest acknowledged traces once the server took more than that in the three rounds.
    config.write_text("storage:\n  snapshot_interval: 1s\n  max_spans: 10000000\n")
    server = ServerProcess(tmp_path / "data", config)
    acked: list[str] = []
    sent: list[str] = []
    try:
        for round_ in range(3):
            server.start()

            async def run(prefix: str) -> None:
                task = asyncio.create_task(stream(server, acked, sent, prefix, stop_after_s=30))
                await asyncio.sleep(1.5)
                server.kill()
                await task

            asyncio.run(run(f"r{round_}"))
        server.start()
        total = get(f"{server.url}/metrics/total_spans?window=1h")["value"]
        assert acked, "no batch was acknowledged"
        assert len(acked) * BATCH <= total <= len(sent) * BATCH
        assert total < 10_000_000, "the trace index's bound must not evict what this test checks"
        # Every acknowledged batch is there exactly once (a replay never doubles it).
        for trace_id in acked[:: max(1, len(acked) // 50)]:
            assert get(f"{server.url}/traces/{trace_id}")["span_count"] == BATCH
        assert total % BATCH == 0
    finally:
        server.stop()
