"""``RedisStore.series`` (what ``GET /metrics/series`` reads on a ``tokentrace api`` replica) over a real Redis
view: each interval equals a recount of the spans written into it, and the intervals add up to the window."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.infra.redis import RedisServer
from tests.processors.conftest import MakeAPI
from tests.processors.test_state import _span
from tests.view.materializing import pending, write_and_wait
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.aggregate import to_nanos
from tokentrace.core.codec import encode_wire
from tokentrace.core.series import intervals
from tokentrace.core.timefmt import now_ms, parse_rfc3339_ms
from tokentrace.core.timeline import MINUTE_MS, TimelineSettings, total
from tokentrace.processors.state import Applier
from tokentrace.view.schema import Entry
from tokentrace.view.writer import Materializer

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


async def test_series_on_the_redis_view_equals_a_recount(store: RedisStore, redis_server: RedisServer) -> None:
    now = now_ms()
    end = now - now % MINUTE_MS + MINUTE_MS
    start = end - 60 * MINUTE_MS
    rng = random.Random(7)
    spans = [
        _span(
            i, now - rng.randrange(55 * MINUTE_MS), model=rng.choice(["a", "b"]), cost_usd=rng.randrange(1, 999) / 1e6
        )
        for i in range(1, 301)
    ]
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    for offset, chunk in enumerate(range(0, len(spans), 50)):
        applier.apply(entries, offset % 2, offset, now, encode_wire(spans[chunk : chunk + 50]))
    materializer = Materializer(redis_server.url, store.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    try:
        await materializer.check_epoch()
        await write_and_wait(materializer, pending(entries, list(entries)))
        cuts = intervals(start, end, 7 * MINUTE_MS)
        by_model = await store.series(cuts, "model", {})
        only_b = await store.series(cuts, None, {"model": "b"})
        whole = await store.query(start, end, "model", {})
    finally:
        writer.cancel()
        await materializer.close()
    assert len(by_model) == len(cuts) == len(only_b)
    for (lo, hi), grouped, filtered in zip(cuts, by_model, only_b, strict=True):
        inside = [s for s in spans if lo <= _ms(s.started_at) < hi]
        for model in ("a", "b"):
            mine = [s for s in inside if s.model == model]
            got = grouped.get(model)
            assert (got.count if got else 0) == len(mine)
            assert (got.cost_nanos if got else 0) == sum(to_nanos(s.cost_usd or 0) for s in mine)
        assert total(filtered).count == sum(s.model == "b" for s in inside)
    for model in ("a", "b"):
        assert sum(p[model].count for p in by_model if model in p) == whole[model].count
        assert sum(p[model].cost_nanos for p in by_model if model in p) == whole[model].cost_nanos


def _ms(text: str | None) -> int:
    assert text is not None
    return parse_rfc3339_ms(text)


async def test_every_api_replica_serves_the_console_and_the_same_series(
    store: RedisStore, redis_server: RedisServer, make_api: MakeAPI
) -> None:
    """The console is part of the app every ``tokentrace api`` replica builds: same page, same chart data."""
    now = now_ms()
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    spans = [_span(i, now - i * 7_000, model=("a", "b")[i % 2]) for i in range(1, 121)]
    applier.apply(entries, 0, 0, now, encode_wire(spans))
    materializer = Materializer(redis_server.url, store.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    try:
        await materializer.check_epoch()
        await write_and_wait(materializer, pending(entries, list(entries)))
        first, second = await make_api(), await make_api()
        pages = [await (await api.get("/console/traces/x")).text() for api in (first, second)]
        assert pages[0] == pages[1] and "<main" in pages[0]
        script = await first.get("/console/assets/app.js")
        assert script.status == 200 and script.content_type == "text/javascript"
        query = {"window": "1h", "step": "5m", "groupby": "model"}
        bodies = [await (await api.get("/metrics/series", params=query)).json() for api in (first, second)]
        metrics = await (await first.get("/metrics", params={"window": "1h", "groupby": "model"})).json()
    finally:
        writer.cancel()
        await materializer.close()
    assert bodies[0] == bodies[1]
    for model in ("a", "b"):
        points = bodies[0]["series"][model]
        assert sum(p["span_count"] for p in points) == metrics["by_model"][model]["span_count"] == 60


async def test_dimensions_on_the_redis_view_are_the_keys_written_in_the_window(
    store: RedisStore, redis_server: RedisServer, make_api: MakeAPI
) -> None:
    """``GET /metrics/dimensions`` on a replica: the attribute keys of the window's spans, old ones included."""
    now = now_ms()
    rng = random.Random(11)
    keys = ["variant", "tenant", "retry", "feature"]
    spans = []
    for i in range(1, 201):
        age = rng.choice([rng.randrange(1, 40) * MINUTE_MS, rng.randrange(70, 170) * MINUTE_MS])
        attributes = {key: rng.choice(["x", 7, False]) for key in rng.sample(keys, rng.randrange(0, 2))}
        attributes["ratio"] = 0.5  # a measurement: never grouped
        if age > 60 * MINUTE_MS:
            attributes["legacy"] = True  # a key of old spans only
        spans.append(_span(i, now - age, attributes=attributes))
    expected = {
        window: sorted({k for s in spans if now - _ms(s.started_at) < length for k in s.attributes} - {"ratio"})
        for window, length in (("1h", 60 * MINUTE_MS), ("3h", 180 * MINUTE_MS))
    }
    assert expected["1h"] != expected["3h"]
    applier = Applier(TimelineSettings(), None, 5 * MINUTE_MS)
    entries: dict[bytes, Entry] = {}
    applier.apply(entries, 0, 0, now, encode_wire(spans))
    materializer = Materializer(redis_server.url, store.keys, 3_600_000, lambda: [])
    writer = asyncio.create_task(materializer.run())
    try:
        await materializer.check_epoch()
        await write_and_wait(materializer, pending(entries, list(entries)))
        replica = await make_api()
        bodies = {w: await (await replica.get("/metrics/dimensions", params={"window": w})).json() for w in expected}
    finally:
        writer.cancel()
        await materializer.close()
    for window, attribute_keys in expected.items():
        assert bodies[window] == {"window": window, "dimensions": ["model", "provider", "caller", *attribute_keys]}
