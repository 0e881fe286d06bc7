"""The console on a ``tokentrace api`` replica of a real distributed deployment: spans posted to the replica go
through Kafka and a ``tokentrace worker`` into the Redis view, and the browser reads them back from it."""

from __future__ import annotations

import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.console.conftest import get_json, make_spans, post_json, watch
from tests.api.server_process import free_port
from tests.infra.kafka import KafkaCluster
from tests.infra.procs import ServerProcess, port_accepts, wait_for
from tests.infra.redis import RedisServer
from tests.processors.harness import Workers
from tokentrace.core.timefmt import now_ms

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def _counted(url: str, expected: int) -> bool:
    try:
        return bool(get_json(f"{url}/metrics?window=6h")["span_count"] == expected)
    except (OSError, urllib.error.HTTPError):
        return False


@pytest.fixture
def replica(kafka_broker: KafkaCluster, redis_server: RedisServer, tmp_path: Path) -> Iterator[Any]:
    """A worker and one ``tokentrace api`` replica over a fresh topic and Redis, holding six hours of traces."""
    topic = kafka_broker.create_topic("console-spans", partitions=4)
    workers = Workers(kafka_broker.bootstrap, redis_server.url, topic, tmp_path / "logs")
    port = free_port()
    argv = [sys.executable, "-m", "tokentrace", "api", "--bootstrap-servers", kafka_broker.bootstrap]
    argv += ["--redis-url", redis_server.url, "--topic", topic, "--addr", f"127.0.0.1:{port}"]
    api = ServerProcess("api", argv, tmp_path / "logs" / "api.log")
    try:
        worker = workers.start()
        api.start()
        wait_for(lambda: port_accepts(port), timeout=60, what="tokentrace api", procs=[api])
        url = f"http://127.0.0.1:{port}"
        spans = make_spans(now_ms(), seed=5)
        for chunk in range(0, len(spans), 200):
            post_json(f"{url}/spans", spans[chunk : chunk + 200])
        wait_for(lambda: _counted(url, len(spans)), timeout=120, what="the view", procs=[api, worker], interval=0.5)
        yield url, spans
    finally:
        api.stop()
        workers.stop_all()


def test_overview_and_a_trace_on_an_api_replica(browser_context: Any, replica: Any) -> None:
    url, spans = replica
    watched = watch(browser_context, url)
    page = watched.page
    try:
        page.goto(f"{url}/?window=6h&groupby=model")
        page.wait_for_selector("#chart-quality canvas")
        metrics = get_json(f"{url}/metrics?window=6h")
        shown = page.locator('[data-figure="Spans"]').inner_text()
        assert int(shown.replace(",", "")) == metrics["span_count"] == len(spans)
        assert page.locator(".uplot").count() == 5
        legend = page.locator("#chart-cost .u-legend").inner_text()
        assert all(model in legend for model in get_json(f"{url}/metrics?window=6h&groupby=model")["by_model"])
        page.wait_for_selector("select[name=groupby] option[value=cohort]", state="attached")
        page.wait_for_function("() => /distributed/.test(document.getElementById('health-strip').textContent)")

        trace = get_json(f"{url}/traces/trace-011")
        page.goto(f"{url}/console/traces/trace-011")
        page.wait_for_selector(".wf-row")
        rows = page.locator(".wf-row")
        assert rows.count() == len(trace["spans"]) == 5
        assert {rows.nth(i).get_attribute("data-span-id") for i in range(5)} == {s["span_id"] for s in trace["spans"]}
        assert page.locator('.wf-row[data-span-id="s4"]').get_attribute("data-depth") == "2"  # tool in step in root
        watched.shot("distributed-trace")
    finally:
        problems = list(watched.problems)
        page.close()
    assert problems == []
