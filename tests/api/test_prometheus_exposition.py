"""``GET /metrics/prometheus`` against the README's "Prometheus" section: content type, families, types, labels, values, promtool.

Spans of several models, providers and callers (errors, timeouts, eval scores, an unknown model, a span
with only ``total_tokens``, spans without latency) go in through ``POST /spans``; the scrape is parsed
with prometheus-client's parser and every sample is checked against a recount of what was sent.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

from tokentrace.api.embedded import price_table
from tokentrace.config import Config
from tokentrace.core.aggregate import LATENCY_BUCKETS_MS, PROMPT_TOKEN_BUCKETS, to_nanos
from tokentrace.core.timefmt import format_ms, now_ms

MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o", "azure"),
    ("gpt-4o-mini", "openai"),
    ("claude-3-5-sonnet-20241022", "anthropic"),
    ("gemini-1.5-flash", "google"),
    ("homebrew-llm", "local"),  # not in any price table
]
UNKNOWN_MODEL = "homebrew-llm"
CALLERS = ["", "summarizer-service", "support-bot", "agent-runner"]
#: The documented families, which the dashboards and example rules query: (name in the exposition, type, label names).
SPEC_FAMILIES = {
    "tokentrace_cost_total": ("counter", {"model", "provider", "caller"}),
    "tokentrace_spans_total": ("counter", {"status", "model", "provider"}),
    "tokentrace_tokens_total": ("counter", {"model", "provider", "type"}),
    "tokentrace_latency_ms": ("histogram", {"model", "provider"}),
    "tokentrace_prompt_tokens": ("histogram", {"model", "provider"}),
    "tokentrace_quality_score": ("gauge", {"model"}),
    "tokentrace_alert_firings_total": ("counter", {"alert", "level"}),
}
SPEC_HELP = {
    "tokentrace_cost_total": "Total cost in USD.",
    "tokentrace_spans_total": "Total spans recorded.",
    "tokentrace_latency_ms": "Inference latency in milliseconds.",
}
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
#: promtool's one lint on those names: ``tokentrace_latency_ms`` is fixed (the dashboards, example rules
#: and users' PromQL use it), and promtool prefers base units. Anything else promtool says fails the test.
SPEC_MANDATED_LINT = "tokentrace_latency_ms metric names should not contain abbreviated units"


def make_spans(count: int, seed: int, at_ms: int) -> list[dict[str, Any]]:
    """Varied spans around ``at_ms``: every model, provider, caller and status, with and without cost."""
    rng = random.Random(seed)
    spans: list[dict[str, Any]] = []
    for i in range(count):
        model, provider = MODELS[i % len(MODELS)]
        span: dict[str, Any] = {
            "model": model,
            "provider": provider,
            "caller": CALLERS[(i // len(MODELS)) % len(CALLERS)],
            "prompt_tokens": rng.choice([0, 10, 64, 65, 300, 1024, 5000, 70000, 300000]),
            "comp_tokens": rng.randint(0, 800),
            "status": rng.choices(["ok", "error", "timeout"], weights=[8, 1, 1])[0],
            "started_at": format_ms(at_ms - rng.randint(0, 20_000)),
            "attributes": {"workflow": rng.choice(["chat", "search"])},
        }
        if i % 7 != 3:
            span["latency_ms"] = rng.choice([50, 100, 100.5, 250, 499.9, 500, 1000, 2600, 31000, 90000])
        if i % 3 == 0:
            span["cost_usd"] = round(rng.uniform(0, 0.05), 6)
        if i % 2 == 0 and span["status"] == "ok":
            span["attributes"]["eval.score"] = round(rng.random(), 3)
        if i % 11 == 5:  # only a total: no price can be computed, no prompt tokens are known
            del span["prompt_tokens"], span["comp_tokens"]
            span["total_tokens"] = 777
        spans.append(span)
    return spans


class Expected:
    """A recount of the sent spans, as the exposition should show it."""

    def __init__(self) -> None:
        self.pricer = price_table(Config())
        self.cost: dict[tuple[str, ...], int] = defaultdict(int)
        self.spans: Counter[tuple[str, ...]] = Counter()
        self.tokens: Counter[tuple[str, ...]] = Counter()
        self.unpriced: Counter[tuple[str, ...]] = Counter()
        self.latency: dict[tuple[str, ...], list[float]] = defaultdict(list)
        self.prompt: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.scores: dict[str, list[float]] = defaultdict(list)

    def add(self, spans: Iterable[dict[str, Any]], recent: bool) -> None:
        for s in spans:
            model, provider, caller = s["model"], s["provider"], s["caller"]
            cost = s.get("cost_usd")
            if cost is None and "prompt_tokens" in s:
                cost = self.pricer.cost(model, s["prompt_tokens"], s["comp_tokens"], provider=provider)
            self.cost[(model, provider, caller)] += 0 if cost is None else to_nanos(cost)
            if cost is None:
                self.unpriced[(model, provider)] += 1
            self.spans[(s["status"], model, provider)] += 1
            self.tokens[(model, provider, "prompt")] += s.get("prompt_tokens", 0)
            self.tokens[(model, provider, "completion")] += s.get("comp_tokens", 0)
            if "latency_ms" in s:
                self.latency[(model, provider)].append(s["latency_ms"])
            if "prompt_tokens" in s:  # a span with only a total tells nothing about its prompt
                self.prompt[(model, provider)].append(s["prompt_tokens"])
            score = s["attributes"].get("eval.score")
            if recent and score is not None:
                self.scores[model].append(score)


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family types by exposed name, and every sample by name and sorted label pairs (no duplicates)."""
    types: dict[str, str] = {}
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        assert exposed not in types, f"family {exposed} appears twice"
        types[exposed] = family.type
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            assert key not in samples[sample.name], f"duplicate series {sample.name}{sample.labels}"
            samples[sample.name][key] = sample.value
    return types, samples


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


async def _post(client: TestClient[Any, Any], body: Any, status: int = 202) -> None:
    response = await client.post("/spans", data=msgspec.json.encode(body))
    assert response.status == status, await response.text()


async def _scrape(client: TestClient[Any, Any]) -> str:
    response = await client.get("/metrics/prometheus")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.text()


@pytest.fixture
async def scraped(client: TestClient[Any, Any]) -> tuple[str, Expected]:
    """A server fed recent and two-hour-old spans plus four rejected requests; its first scrape."""
    now = now_ms()
    expected = Expected()
    recent = make_spans(240, seed=1, at_ms=now - 30_000)
    old = make_spans(120, seed=2, at_ms=now - 2 * 3_600_000)
    for i in range(0, len(recent), 100):
        await _post(client, recent[i : i + 100])
    await _post(client, old)
    expected.add(recent, recent=True)
    expected.add(old, recent=False)
    await _post(client, {"model": "gpt-4o", "prompt_tokens": 1.5}, 400)  # invalid
    await _post(client, [{"model": "gpt-4o", "total_tokens": 1}] * 1001, 413)  # too_large
    await _post(client, {"model": "gpt-4o", "total_tokens": 1, "started_at": "2001-01-01T00:00:00Z"}, 400)
    await _post(client, {"model": "gpt-4o", "total_tokens": 1, "started_at": format_ms(now + 86_400_000)}, 400)
    return await _scrape(client), expected


async def test_families_types_labels_and_help_follow_spec_003(scraped: tuple[str, Expected]) -> None:
    text, _ = scraped
    types, samples = parse(text)
    for name, (kind, label_names) in SPEC_FAMILIES.items():
        assert types.get(name) == kind, name
        assert f"# TYPE {name} {kind}\n" in text
        series = samples.get(name, {}) if kind != "histogram" else samples.get(f"{name}_count", {})
        for key in series:
            assert {k for k, _ in key} == label_names, (name, key)
    for name, help_text in SPEC_HELP.items():
        assert f"# HELP {name} {help_text}\n" in text
    for key in samples["tokentrace_latency_ms_bucket"]:
        assert {k for k, _ in key} == {"model", "provider", "le"}


async def test_values_match_a_recount_of_the_spans_sent(scraped: tuple[str, Expected]) -> None:
    text, want = scraped
    _, got = parse(text)

    assert got["tokentrace_cost_total"] == pytest.approx(
        {labels(model=m, provider=p, caller=c): n / 1e9 for (m, p, c), n in want.cost.items()}, rel=1e-9, abs=1e-12
    )
    assert got["tokentrace_spans_total"] == {
        labels(status=s, model=m, provider=p): float(n) for (s, m, p), n in want.spans.items()
    }
    assert {s for (s, *_) in want.spans} == {"ok", "error", "timeout"}
    assert got["tokentrace_tokens_total"] == {
        labels(model=m, provider=p, type=t): float(n) for (m, p, t), n in want.tokens.items()
    }
    assert got["tokentrace_unpriced_spans_total"] == {
        labels(model=m, provider=p): float(n) for (m, p), n in want.unpriced.items()
    }
    assert labels(model=UNKNOWN_MODEL, provider="local") in got["tokentrace_unpriced_spans_total"]
    assert got["tokentrace_cost_total"][labels(model=UNKNOWN_MODEL, provider="local", caller="")] == 0
    assert got["tokentrace_price_lookup_misses_total"][labels(model=UNKNOWN_MODEL)] >= 1

    for (model, provider), values in want.latency.items():
        key = dict(model=model, provider=provider)
        for bound in LATENCY_BUCKETS_MS:
            le = labels(**key, le=_le(bound))
            assert got["tokentrace_latency_ms_bucket"][le] == sum(v <= bound for v in values), (key, bound)
        assert got["tokentrace_latency_ms_bucket"][labels(**key, le="+Inf")] == len(values)
        assert got["tokentrace_latency_ms_count"][labels(**key)] == len(values)
        assert got["tokentrace_latency_ms_sum"][labels(**key)] == pytest.approx(sum(values))
    assert len(got["tokentrace_latency_ms_count"]) == len(want.latency)

    for (model, provider), prompts in want.prompt.items():
        key = dict(model=model, provider=provider)
        for bound in PROMPT_TOKEN_BUCKETS:
            le = labels(**key, le=_le(bound))
            assert got["tokentrace_prompt_tokens_bucket"][le] == sum(v <= bound for v in prompts), (key, bound)
        assert got["tokentrace_prompt_tokens_bucket"][labels(**key, le="+Inf")] == len(prompts)
        assert got["tokentrace_prompt_tokens_count"][labels(**key)] == len(prompts)
        assert got["tokentrace_prompt_tokens_sum"][labels(**key)] == sum(prompts)

    # The gauge averages the last five minutes only: the two-hour-old scores are not in it.
    assert got["tokentrace_quality_score"] == pytest.approx(
        {labels(model=m): sum(v) / len(v) for m, v in want.scores.items()}, rel=1e-9
    )
    assert got["tokentrace_ingest_rejections_total"] == {
        labels(reason="invalid"): 1.0,
        labels(reason="too_large"): 1.0,
        labels(reason="too_old"): 1.0,
        labels(reason="future"): 1.0,
    }
    assert "tokentrace_alert_firings_total" not in got  # alerting is off: the family is there, empty


async def test_histogram_buckets_are_cumulative_and_end_at_inf(scraped: tuple[str, Expected]) -> None:
    _, got = parse(scraped[0])
    for name in ("tokentrace_latency_ms", "tokentrace_prompt_tokens"):
        by_series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
        for key, value in got[f"{name}_bucket"].items():
            le = dict(key)["le"]
            by_series[tuple(kv for kv in key if kv[0] != "le")].append((float(le), value))
        for series, buckets in by_series.items():
            buckets.sort()
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), (name, series)
            assert buckets[-1][0] == float("inf")
            assert buckets[-1][1] == got[f"{name}_count"][series]


async def test_latency_buckets_start_as_in_spec_003(scraped: tuple[str, Expected]) -> None:
    _, got = parse(scraped[0])
    bounds = sorted({float(dict(key)["le"]) for key in got["tokentrace_latency_ms_bucket"]})
    assert bounds[:3] == [100, 500, 1000]


async def test_counters_never_go_down(client: TestClient[Any, Any], scraped: tuple[str, Expected]) -> None:
    _, before = parse(scraped[0])
    await _post(client, make_spans(60, seed=3, at_ms=now_ms() - 1_000))
    _, after = parse(await _scrape(client))
    for name in ("tokentrace_cost_total", "tokentrace_spans_total", "tokentrace_tokens_total"):
        for key, value in before[name].items():
            assert after[name][key] >= value, (name, key)
    assert sum(after["tokentrace_spans_total"].values()) == sum(before["tokentrace_spans_total"].values()) + 60


def promtool_check(text: str) -> tuple[int, list[str]]:
    """``promtool check metrics`` on ``text``: exit code and the problems it printed."""
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    problems = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.returncode, problems


async def test_promtool_check_metrics_passes(scraped: tuple[str, Expected]) -> None:
    if not shutil.which(PROMTOOL):
        pytest.fail("promtool not found: scripts/install-test-deps installs Debian's prometheus package")
    text = scraped[0]
    code, problems = promtool_check(text)
    assert problems == [SPEC_MANDATED_LINT], problems
    assert code == 3  # promtool: 3 = lint problems only, 1 = the exposition could not be parsed
    # With the fixed name out of the way (any unit suffix but seconds lints), promtool is silent.
    renamed = text.replace("tokentrace_latency_ms", "tokentrace_latency")
    assert promtool_check(renamed) == (0, [])


async def test_promtool_on_an_empty_server(client: TestClient[Any, Any]) -> None:
    text = await _scrape(client)
    types, _ = parse(text)
    assert set(SPEC_FAMILIES) <= set(types)
    code, problems = promtool_check(text)
    assert problems in ([], [SPEC_MANDATED_LINT]), problems
    assert code in (0, 3)
