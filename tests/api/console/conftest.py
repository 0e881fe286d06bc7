"""The console in a real browser: Debian's chromium driven by Playwright, against a real ``tokentrace serve``.

Every page a test opens is watched: a JavaScript error, a console error, a failed request or a request to any
host other than the server fails the test (tests that provoke a 4xx on purpose list the URL they expect).
Screenshots go to ``test-artifacts/console/`` (gitignored).
"""

from __future__ import annotations

import json
import random
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import playwright.sync_api as playwright_sync
import pytest
from benchkit.chromium import CHROMIUM, launch

from tests.api.server_process import ServerProcess
from tokentrace.core.timefmt import format_ms, now_ms

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"
CONFIG = """
alerting: {interval: 1s}
alerts:
  - {name: config-cost, metric: total_cost, op: gt, threshold: 1000, window: 1h}
"""
MINUTE = 60_000
#: Spans older than this carry the attribute ``cohort`` too.
EARLY_MS = 3 * 60 * MINUTE
MODELS = {"gpt-4o": "openai", "gpt-4o-mini": "openai", "claude-3-5-haiku": "anthropic"}


def make_spans(now: int, seed: int = 3) -> list[dict[str, Any]]:
    """Agent traces over the last six hours: a root around three sequential steps, a tool call inside the
    second step, each with its own model, tokens, cost, latency and status."""
    rng = random.Random(seed)
    spans: list[dict[str, Any]] = []
    for t in range(120):
        start = now - rng.randrange((6 * 60 - 2) * MINUTE) - 30_000  # inside the 6h window, whole buckets
        variant = ("a", "b")[t % 2]
        caller = ("web", "batch")[t % 3 == 0]
        timing: dict[str, tuple[int, float, str | None]] = {}  # span id -> (start, latency, parent)
        at = start + 5
        for step in ("s1", "s2", "s3"):
            latency = round(rng.uniform(150, 2500), 1)
            timing[step] = (at, latency, "root")
            if step == "s2":
                timing["s4"] = (at + 20, round(latency * rng.uniform(0.3, 0.8), 1), "s2")
            at += int(latency) + 3
        timing["root"] = (start, float(at - start + 5), None)
        names = {"root": "agent", "s1": "plan", "s2": "retrieve", "s3": "answer", "s4": "search-tool"}
        for span_id in ("root", "s1", "s2", "s4", "s3"):
            began, latency, parent = timing[span_id]
            model = rng.choice(list(MODELS))
            status = rng.choices(["ok", "error", "timeout"], [90, 7, 3])[0]
            attributes: dict[str, Any] = {"variant": variant, "eval.score": round(rng.uniform(0.4, 1), 3)}
            if now - began > EARLY_MS:  # a key only old spans have: never among the newest 100
                attributes["cohort"] = ("pilot", "rollout")[t % 2]
            span = {
                "trace_id": f"trace-{t:03d}",
                "span_id": span_id,
                "parent_span_id": parent,
                "name": names[span_id],
                "model": model,
                "provider": MODELS[model],
                "caller": caller,
                "prompt_tokens": rng.randrange(50, 3000),
                "comp_tokens": rng.randrange(10, 600),
                "cost_usd": round(rng.uniform(0.0001, 0.02), 6),
                "latency_ms": latency,
                "status": status,
                "started_at": format_ms(began),
                "attributes": attributes,
            }
            if status == "error":
                span["error"] = "upstream 500"
            spans.append(span)
    return spans


def post_json(url: str, body: Any, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        return json.loads(response.read())


def serve(root: Path, config: str) -> ServerProcess:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokentrace.yml").write_text(config)
    server = ServerProcess(root / "data", config=root / "tokentrace.yml")
    server.start()
    return server


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real ``tokentrace serve`` holding six hours of agent traces and one config-file alert rule."""
    process = serve(tmp_path_factory.mktemp("console"), CONFIG)
    try:
        spans = make_spans(now_ms())
        for chunk in range(0, len(spans), 500):
            post_json(f"{process.url}/spans", spans[chunk : chunk + 500])
        process.spans = spans  # type: ignore[attr-defined]
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="package")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = serve(tmp_path_factory.mktemp("console-auth"), 'http_server: {auth_token: "s3cret-token"}\n')
    try:
        post_json(f"{process.url}/spans", make_spans(now_ms())[:50], token="s3cret-token")
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="package")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        # What a person sees is tested as a person sees it: a missing browser fails the suite, never skips it.
        pytest.fail(
            "Debian's chromium is not installed: scripts/install-test-deps installs it (apt-get install chromium)"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_sync.sync_playwright() as playwright:
        context = launch(
            playwright,
            tmp_path_factory.mktemp("chromium-profile"),
            viewport={"width": 1400, "height": 1000},
            locale="en-GB",
            timezone_id="UTC",
        )
        context.set_default_timeout(15_000)
        yield context
        context.close()


@dataclass
class Watched:
    """A page with everything that went wrong on it recorded."""

    page: Any
    origin: str
    problems: list[str] = field(default_factory=list)
    expected_status: set[tuple[int, str]] = field(default_factory=set)

    def expect_status(self, status: int, path: str) -> None:
        """A response of ``status`` for a URL containing ``path`` is the point of the test, not a failure."""
        self.expected_status.add((status, path))

    def _expected(self, status: int, url: str) -> bool:
        return any(status == s and p in url for s, p in self.expected_status)

    def shot(self, name: str) -> None:
        # The header's ingest rate needs two reads of /health, a second apart: show the figure, not its "—".
        self.page.wait_for_function(
            "() => { const el = document.getElementById('ingest-rate'); return !el || /spans\\/s/.test(el.textContent); }"
        )
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def watch(context: Any, origin: str) -> Watched:
    page = context.new_page()
    watched = Watched(page, origin)

    def on_request(request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if f"{parts.scheme}://{parts.netloc}" != origin:
            watched.problems.append(f"request to another host: {request.url}")

    def on_console(message: Any) -> None:
        if message.type == "error":
            # Chromium logs every 4xx as a console error; the ones a test provokes are expected.
            text = message.text
            location = message.location.get("url", "") if isinstance(message.location, dict) else ""
            if "Failed to load resource" in text and any(p in location for _, p in watched.expected_status):
                return
            watched.problems.append(f"console error: {text} ({location})")

    def on_response(response: Any) -> None:
        if response.status >= 400 and not watched._expected(response.status, response.url):
            watched.problems.append(f"HTTP {response.status} for {response.url}")

    page.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))
    # A fetch cut short by leaving the page (ERR_ABORTED) is the browser's doing; any other failure is not.
    page.on(
        "requestfailed",
        lambda request: (
            "ERR_ABORTED" in (request.failure or "")
            or watched.problems.append(f"failed: {request.url} {request.failure}")
        ),
    )
    page.on("response", on_response)
    return watched


@pytest.fixture
def console(browser_context: Any, server: ServerProcess) -> Iterator[Watched]:
    watched = watch(browser_context, server.url)
    yield watched
    problems = list(watched.problems)
    watched.page.close()
    assert problems == []
