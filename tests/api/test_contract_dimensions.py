"""GET /metrics/dimensions: the built-in dimensions and exactly the attribute keys posted inside the window."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tokentrace.core.timefmt import format_ms, now_ms

MINUTE = 60_000
BUILTIN = ["model", "provider", "caller"]
#: Keys of groupable attribute values (strings, integers, booleans), spread over the last three hours.
KEYS = ["variant", "feature", "tenant", "retry", "cached", "region", "prompt.version"]
WINDOWS = {"15m": 15 * MINUTE, "1h": 60 * MINUTE, "24h": 24 * 60 * MINUTE}


def make_spans(seed: int, now: int) -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    """Spans minutes away from any window edge (the answer cannot depend on when the minute turns), the newest
    100 with no attributes at all, and the attribute keys of each window by brute force."""
    rng = random.Random(seed)
    ages = sorted(
        rng.choice([rng.randrange(1, 12 * MINUTE), rng.randrange(18, 55) * MINUTE, rng.randrange(65, 180) * MINUTE])
        for _ in range(300)
    )
    spans: list[dict[str, Any]] = []
    seen: dict[str, set[str]] = {window: set() for window in WINDOWS}
    for i, age in enumerate(ages):
        attributes: dict[str, Any] = {}
        if i >= 100:
            attributes = {"eval.score": round(rng.random(), 2), "ratio": rng.random()}  # never grouped
            for key in rng.sample(KEYS, rng.randrange(0, 3)):
                attributes[key] = rng.choice(["x", "y", 3, True])
        spans.append(
            {
                "trace_id": f"dim-{seed}-{i}",
                "name": "call",
                "model": "gpt-4o",
                "prompt_tokens": 10,
                "comp_tokens": 2,
                "started_at": format_ms(now - age),
                "attributes": attributes,
            }
        )
        for window, length in WINDOWS.items():
            if age < length:
                seen[window] |= set(attributes) & set(KEYS)
    return spans, seen


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_dimensions_are_the_keys_posted_in_the_window(client: TestClient[Any, Any], seed: int) -> None:
    spans, seen = make_spans(seed, now_ms())
    response = await client.post("/spans", json=spans)
    assert response.status == 202, await response.text()
    recent = await (await client.get("/traces/recent", params={"limit": 100})).json()
    assert not {key for span in recent["spans"] for key in span.get("attrs", {})} & set(KEYS)  # what the console read
    assert seen["1h"] and seen["15m"] != seen["24h"]  # the data tells the windows apart
    for window, keys in seen.items():
        response = await client.get("/metrics/dimensions", params={"window": window})
        assert response.status == 200
        assert await response.json() == {"window": window, "dimensions": BUILTIN + sorted(keys)}
    default = await (await client.get("/metrics/dimensions")).json()
    assert default == {"window": "1h", "dimensions": BUILTIN + sorted(seen["1h"])}


async def test_an_empty_store_offers_the_built_in_dimensions(client: TestClient[Any, Any]) -> None:
    assert await (await client.get("/metrics/dimensions", params={"window": "30d"})).json() == {
        "window": "30d",
        "dimensions": BUILTIN,
    }


@pytest.mark.parametrize("window", ["", "1x", "-1h", "99999h"])
async def test_a_bad_window_is_a_400(client: TestClient[Any, Any], window: str) -> None:
    response = await client.get("/metrics/dimensions", params={"window": window})
    assert response.status == 400
    assert "window" in (await response.json())["error"]
