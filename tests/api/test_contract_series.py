"""GET /metrics/series: every interval checked against a recount of the spans sent, and the intervals
against GET /metrics over the same window (a real ``tokentrace serve``, hypothesis picking the queries)."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.server_process import ServerProcess
from tests.api.test_contract_metrics import close, quantile
from tokentrace.core.aggregate import to_nanos
from tokentrace.core.timefmt import format_ms, now_ms, parse_rfc3339_ms

MINUTE = 60_000
HOUR = 60 * MINUTE
MODELS = {"gpt-4o": "openai", "gpt-4o-mini": "openai", "claude-3-5-haiku": "anthropic"}
#: Data spans the last 30 hours: all still in minute buckets (compaction into hours starts at 48h).
SPREAD_MS = 30 * HOUR


def make_spans(seed: int, now: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    spans = []
    for i in range(900):
        model = rng.choice(list(MODELS))
        # A third of the spans land in the last hour, so short windows and steps have data.
        age = rng.randrange(HOUR) if i % 3 == 0 else rng.randrange(SPREAD_MS)
        attributes: dict[str, Any] = {"variant": rng.choice(["a", "b"])}
        if rng.random() < 0.4:
            attributes["eval.score"] = round(rng.random(), 3)
        spans.append(
            {
                "trace_id": f"series-{i}",
                "name": "call",
                "model": model,
                "provider": MODELS[model],
                "caller": rng.choice(["web", "batch", "bot"]),
                "prompt_tokens": rng.randrange(1, 5000),
                "comp_tokens": rng.randrange(0, 800),
                "cost_usd": round(rng.uniform(0, 0.05), 6),
                "latency_ms": round(rng.uniform(20, 9000), 1),
                "status": rng.choices(["ok", "error", "timeout"], [85, 10, 5])[0],
                "started_at": format_ms(now - age - 1),
                "attributes": attributes,
            }
        )
    return spans


def _get(server: ServerProcess, path: str, **params: str) -> tuple[int, Any]:
    url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[dict[str, Any]]]]:
    server = ServerProcess(tmp_path_factory.mktemp("series") / "data")
    server.start()
    spans = make_spans(24, now_ms())
    request = urllib.request.Request(
        f"{server.url}/spans", data=json.dumps(spans).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202
    yield server, spans
    server.stop()


def _answer(server: ServerProcess, params: dict[str, str]) -> tuple[Any, Any, int]:
    """The series and /metrics bodies read in one bucket, with that bucket's window end."""
    for _ in range(5):
        before = now_ms() // MINUTE
        status, series = _get(server, "/metrics/series", **params)
        assert status == 200, series
        plain = {k: v for k, v in params.items() if k in ("window", "groupby")}
        _, metrics = _get(server, "/metrics", **plain)
        if now_ms() // MINUTE == before:
            return series, metrics, (before + 1) * MINUTE
    raise AssertionError("could not read within one minute bucket")


def _oracle_point(spans: list[dict[str, Any]], point: dict[str, Any]) -> None:
    assert point["span_count"] == len(spans)
    assert to_nanos(point["cost_usd"]) == sum(to_nanos(s["cost_usd"]) for s in spans)
    assert point["tokens"] == {
        "prompt_total": sum(s["prompt_tokens"] for s in spans),
        "completion_total": sum(s["comp_tokens"] for s in spans),
        "total": sum(s["prompt_tokens"] + s["comp_tokens"] for s in spans),
    }
    errors = sum(s["status"] == "error" for s in spans)
    assert point["errors"] == {"count": errors, "rate": round(errors / len(spans), 6) if spans else 0.0}
    latencies = [s["latency_ms"] for s in spans]
    for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        if latencies:
            assert close(point["latency"][key], quantile(latencies, q)), key
        else:
            assert point["latency"][key] is None  # a gap, never 0
    scores = [s["attributes"]["eval.score"] for s in spans if "eval.score" in s["attributes"]]
    if scores:
        assert point["quality"]["score_avg"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
        assert close(point["quality"]["score_p10"], quantile(scores, 0.10))
    else:
        assert point["quality"] == {"score_avg": None, "score_p10": None}


def _check_points(points: list[dict[str, Any]], spans: list[dict[str, Any]], start: int, end: int, step: int) -> None:
    starts = [parse_rfc3339_ms(p["start"]) for p in points]
    # One point per interval, empty ones included: the window cut at multiples of step, clipped to it.
    expected = [start, *range(start - start % step + step, end, step)]
    assert starts == expected
    for i, point in enumerate(points):
        until = starts[i + 1] if i + 1 < len(starts) else end
        inside = [s for s in spans if starts[i] <= parse_rfc3339_ms(s["started_at"]) < until]
        _oracle_point(inside, point)


SERIES_CASES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SERIES_CASES
@given(
    window_minutes=st.sampled_from([15, 60, 90, 360, 1440, 2880]),
    step_minutes=st.sampled_from([1, 2, 5, 7, 15, 60, 180]),
    groupby=st.sampled_from([None, "model", "caller", "variant"]),
    model=st.sampled_from([None, "gpt-4o", "claude-3-5-haiku", "unknown-model"]),
)
def test_points_equal_a_recount_and_add_up_to_metrics(
    loaded: tuple[ServerProcess, list[dict[str, Any]]],
    window_minutes: int,
    step_minutes: int,
    groupby: str | None,
    model: str | None,
) -> None:
    server, spans = loaded
    window, step = f"{window_minutes}m", step_minutes * MINUTE
    params = {"window": window, "step": f"{step_minutes}m"} | ({"groupby": groupby} if groupby else {})
    params |= {"model": model} if model else {}
    if -(-window_minutes // step_minutes) + 1 > 1000:
        return
    series, metrics, end = _answer(server, params)
    start = end - window_minutes * MINUTE
    assert series["window"] == window and series["step"] == f"{step_minutes}m"
    chosen = [s for s in spans if model is None or s["model"] == model]
    if groupby is None:
        _check_points(series["points"], chosen, start, end, step)
        groups = {"": series["points"]}
    else:
        assert series["groupby"] == groupby
        key = (lambda s: s["attributes"][groupby]) if groupby == "variant" else (lambda s: s[groupby])
        in_window = [s for s in chosen if start <= parse_rfc3339_ms(s["started_at"]) < end]
        assert set(series["series"]) == {key(s) for s in in_window}
        for value, points in series["series"].items():
            _check_points(points, [s for s in chosen if key(s) == value], start, end, step)
        groups = series["series"]
    if model is not None:
        return  # /metrics has no filters; the recount above covers the filtered series
    # The intervals add up to /metrics over the same window, exactly (integer counts, nanodollars).
    bodies = {"": metrics} if groupby is None else metrics[f"by_{groupby}"]
    assert set(bodies) == set(groups)
    for value, points in groups.items():
        body = bodies[value]
        assert sum(p["span_count"] for p in points) == body["span_count"]
        assert sum(to_nanos(p["cost_usd"]) for p in points) == to_nanos(body["cost"]["total_usd"])
        assert sum(p["tokens"]["total"] for p in points) == body["tokens"]["total"]
        assert sum(p["errors"]["count"] for p in points) == body["errors"]["count"]


def test_filters_combine(loaded: tuple[ServerProcess, list[dict[str, Any]]]) -> None:
    server, spans = loaded
    params = {"window": "6h", "step": "30m", "caller": "web", "provider": "openai", "groupby": "variant"}
    series, _, end = _answer(server, params)
    assert series["filter"] == {"provider": "openai", "caller": "web"}
    chosen = [s for s in spans if s["caller"] == "web" and s["provider"] == "openai"]
    for value, points in series["series"].items():
        _check_points(
            points, [s for s in chosen if s["attributes"]["variant"] == value], end - 6 * HOUR, end, 30 * MINUTE
        )


# ------------------------------------------------------------------------------------ bad input, in process


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ("window=1h", "step"),
        ("window=1h&step=", "step"),
        ("window=1h&step=90s", "step"),  # not a whole number of one-minute buckets
        ("window=1h&step=30s", "step"),
        ("window=1h&step=soon", "step"),
        ("window=1h&step=-5m", "step"),
        ("window=30d&step=1m", "step"),  # 43,200 points
        ("window=7d&step=10m", "step"),  # 1,008 points
        ("window=forever&step=1m", "window"),
        ("window=31d&step=1h", "window"),
        ("window=1h&step=1m&groupby=__series__", "groupby"),
    ],
)
async def test_bad_queries_are_400(client: TestClient[Any, Any], query: str, word: str) -> None:
    response = await client.get(f"/metrics/series?{query}")
    assert response.status == 400
    assert word in (await response.json())["error"]


async def test_empty_server_answers_every_interval(client: TestClient[Any, Any]) -> None:
    response = await client.get("/metrics/series", params={"window": "1h", "step": "5m"})
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"window", "step", "points"}
    # 60 one-minute buckets cut at multiples of 5m: 12 intervals, or 13 when the window starts mid-interval.
    assert len(body["points"]) in (12, 13)
    for point in body["points"]:
        assert point["span_count"] == 0 and point["cost_usd"] == 0
        assert point["latency"] == {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    grouped = await (
        await client.get("/metrics/series", params={"window": "1h", "step": "5m", "groupby": "model"})
    ).json()
    assert grouped["series"] == {}


async def test_at_most_a_thousand_points(client: TestClient[Any, Any]) -> None:
    # 16h40m of minutes, cut at multiples of one minute: exactly 1,000.
    ok = await client.get("/metrics/series", params={"window": "1000m", "step": "1m"})
    assert ok.status == 200 and len((await ok.json())["points"]) == 1000
    over = await client.get("/metrics/series", params={"window": "1001m", "step": "1m"})
    assert over.status == 400
