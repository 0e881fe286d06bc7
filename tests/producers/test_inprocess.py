"""In-process mode: the tracer's own aggregator, alert rules and HTTP server, against real HTTP and real
subprocesses (the quickstart scripts in examples/, README "Metrics and alerts inside your process")."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.producers.conftest import RecordingTransport
from tokentrace.core.aggregate import from_nanos, to_nanos
from tokentrace.core.span import Span
from tokentrace.producers import (
    AlertRule,
    HTTPServerConfig,
    NoopTransport,
    Tracer,
    TracerConfig,
    WebhookDelivery,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LOCAL = "127.0.0.1:0"


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def local(url: str | None) -> str:
    assert url is not None
    return url.replace("0.0.0.0", "127.0.0.1")


def total_usd(costs: list[float]) -> float:
    """The oracle: the API sums integer billionths of each span's cost."""
    return round(from_nanos(sum(to_nanos(c) for c in costs)), 9)


def inprocess_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tokentrace-inprocess"]


@pytest.fixture
def no_leftover_threads() -> Iterator[None]:
    yield
    assert inprocess_threads() == []


# --- the library ------------------------------------------------------------------------------------------


def test_metrics_count_every_span_the_tracer_sends(recording: RecordingTransport, no_leftover_threads: None) -> None:
    with Tracer(transport=recording, http_server=HTTPServerConfig(addr=LOCAL)) as tracer:
        for n in range(30):
            with tracer.start("summarize") as trace:
                trace.record(model="gpt-4o-mini", prompt_tokens=100 + n, comp_tokens=7 * n, latency_ms=100 + n)
                if n % 3 == 0:
                    trace.record(model="gpt-4o", provider="openai", prompt_tokens=n + 1, comp_tokens=2)
        tracer.flush()
        status, body = get(f"{local(tracer.server_url)}/metrics/cost?window=1h")
        spans = recording.spans
        assert status == 200
        assert body["total_usd"] == total_usd([s.cost_usd or 0.0 for s in spans])
        assert body["span_count"] == len(spans) == 40
        assert body["window"] == "1h"
        assert all(s.cost_usd for s in spans)
        for model in ("gpt-4o-mini", "gpt-4o"):
            assert body["by_model"][model] == total_usd([s.cost_usd or 0.0 for s in spans if s.model == model])
        status, latency = get(f"{local(tracer.server_url)}/metrics/latency?window=1h")
        assert status == 200 and set(latency) >= {"p50_ms", "p95_ms", "p99_ms", "window"}
        status, health = get(f"{local(tracer.server_url)}/health")
        assert (status, health["status"], health["span_count"]) == (200, "ok", 40)
        trace_id = spans[0].trace_id
        status, trace_body = get(f"{local(tracer.server_url)}/traces/{trace_id}")
        assert status == 200 and len(trace_body["spans"]) == 2


def test_spans_count_whatever_the_transport_does(no_leftover_threads: None) -> None:
    """A transport that drops everything (or raises) does not keep spans from the aggregator."""

    class Broken(RecordingTransport):
        def send(self, spans: Any) -> None:
            raise RuntimeError("down")

    for transport in (NoopTransport(), Broken()):
        with Tracer(transport=transport, http_server=HTTPServerConfig(addr=LOCAL)) as tracer:
            with tracer.start("t") as trace:
                trace.record(model="gpt-4o", prompt_tokens=10, comp_tokens=1)
            tracer.flush()
            assert get(f"{local(tracer.server_url)}/metrics/cost?window=1h")[1]["span_count"] == 1


def test_auth_token_and_prometheus_path_apply(no_leftover_threads: None) -> None:
    config = HTTPServerConfig(addr=LOCAL, auth_token="s3cret", prometheus_path="/prom")
    with Tracer(TracerConfig(transport=NoopTransport(), http_server=config)) as tracer:
        url = local(tracer.server_url)
        assert get(f"{url}/metrics?window=1h")[0] == 401
        assert get(f"{url}/metrics?window=1h", token="s3cret")[0] == 200
        request = urllib.request.Request(f"{url}/prom", headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b"tokentrace_" in response.read()


def test_a_port_in_use_fails_at_construction(no_leftover_threads: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=f"127.0.0.1:{port}"))


@pytest.mark.parametrize("addr", ["9090", "localhost:http", ":99999"])
def test_a_bad_address_is_a_value_error(addr: str, no_leftover_threads: None) -> None:
    with pytest.raises(ValueError, match="invalid address"):
        Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=addr))


def test_bad_alert_settings_fail_at_construction(no_leftover_threads: None) -> None:
    rule = AlertRule(name="r", metric="total_cost", op=">", threshold=1.0)
    with pytest.raises(ValueError, match="alert_interval"):
        Tracer(transport=NoopTransport(), alerts=[rule], alert_interval="soon")
    with pytest.raises(TypeError, match="AlertRule"):
        Tracer(transport=NoopTransport(), alerts=[{"name": "r"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="metric"):
        AlertRule(name="r", metric="cost", op=">", threshold=1.0)


def test_without_alerts_or_server_there_is_no_thread(recording: RecordingTransport) -> None:
    tracer = Tracer(transport=recording)
    assert tracer.server_url is None and inprocess_threads() == []
    tracer.close()


def test_alert_fires_to_a_webhook_once_and_shows_in_alerts(no_leftover_threads: None) -> None:
    """Alerts only (no server): the rule is evaluated on the timer and delivered by the server's sinks."""
    received: list[dict[str, Any]] = []
    receiver = _Receiver(received)
    rule = AlertRule(
        name="cost-spike",
        metric="total_cost",
        op=">",
        threshold=0.01,
        window="1h",
        delivery=WebhookDelivery(url=receiver.url),
    )
    with Tracer(transport=NoopTransport(), alerts=[rule], alert_interval=0.1) as tracer:
        assert tracer.server_url is None
        with tracer.start("t") as trace:
            span = trace.record(model="gpt-4o", provider="openai", prompt_tokens=10_000, comp_tokens=100)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # several more rounds: still one notification (cooldown)
    receiver.close()
    assert len(received) == 1
    payload = received[0]
    assert {k: payload[k] for k in ("alert", "metric", "threshold", "window", "status")} == {
        "alert": "cost-spike",
        "metric": "total_cost",
        "threshold": 0.01,
        "window": "1h",
        "status": "firing",
    }
    assert payload["value"] == total_usd([span.cost_usd or 0.0])


@pytest.mark.slow
def test_alert_reaches_a_real_alertmanager(no_leftover_threads: None) -> None:
    from tests.infra.alertmanager import Alertmanager
    from tokentrace.producers import AlertmanagerDelivery

    with Alertmanager(f"http://127.0.0.1:{free_port()}/hook") as am:
        rule = AlertRule(
            name="inproc-cost",
            metric="total_cost",
            op=">",
            threshold=0.01,
            filter={"model": "gpt-4o"},
            level="critical",
            delivery=AlertmanagerDelivery(url=am.url),
        )
        http = HTTPServerConfig(addr=LOCAL)
        with Tracer(transport=NoopTransport(), alerts=[rule], alert_interval=0.1, http_server=http) as tracer:
            with tracer.start("t") as trace:
                trace.record(model="gpt-4o", provider="openai", prompt_tokens=10_000, comp_tokens=100)
            deadline = time.monotonic() + 15
            held: list[dict[str, Any]] = []
            while not held and time.monotonic() < deadline:
                held = [a for a in am.alerts() if a["labels"].get("alertname") == "inproc-cost"]
                time.sleep(0.1)
            assert held, am.log_tail()
            assert held[0]["labels"] == {"alertname": "inproc-cost", "severity": "critical", "model": "gpt-4o"}
            assert held[0]["generatorURL"] == f"{tracer.server_url}/alerts".replace("0.0.0.0", "localhost")


def test_alerts_endpoint_lists_code_rules_and_accepts_api_rules(no_leftover_threads: None) -> None:
    rule = AlertRule(name="cost-spike", metric="total_cost", op=">", threshold=100.0)
    with Tracer(transport=NoopTransport(), alerts=[rule], http_server=HTTPServerConfig(addr=LOCAL)) as tracer:
        url = local(tracer.server_url)
        status, body = get(f"{url}/alerts")
        assert status == 200
        assert [(a["name"], a["source"]) for a in body] == [("cost-spike", "config")]
        created = urllib.request.Request(
            f"{url}/alerts",
            data=json.dumps({"name": "errors", "metric": "error_rate", "op": ">", "threshold": 0.5}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(created, timeout=10) as response:
            assert response.status == 201
        assert {a["name"] for a in get(f"{url}/alerts")[1]} == {"cost-spike", "errors"}


def test_data_dir_makes_it_durable(tmp_path: Path, no_leftover_threads: None) -> None:
    costs: list[float] = []
    with Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=LOCAL), data_dir=tmp_path) as tracer:
        for n in range(5):
            with tracer.start("t") as trace:
                costs.append(trace.record(model="gpt-4o", prompt_tokens=1000 + n, comp_tokens=10).cost_usd or 0.0)
    assert any(tmp_path.glob("snapshot-*.bin")) or any((tmp_path / "wal").glob("wal-*.log"))
    with Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=LOCAL), data_dir=tmp_path) as tracer:
        body = get(f"{local(tracer.server_url)}/metrics/cost?window=1h")[1]
    assert (body["span_count"], body["total_usd"]) == (5, total_usd(costs))


def test_the_trace_index_keeps_max_indexed_spans(no_leftover_threads: None) -> None:
    """/traces shows the newest ``max_indexed_spans`` spans' traces; the metrics still count every span."""
    with Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=LOCAL), max_indexed_spans=5) as tracer:
        ids = []
        for _ in range(8):
            with tracer.start("t") as trace:
                trace.record(model="gpt-4o", prompt_tokens=1, comp_tokens=1)
            ids.append(trace.id)
        tracer.flush()
        url = local(tracer.server_url)
        body = get(f"{url}/traces?limit=100")[1]
        assert {t["trace_id"] for t in body["traces"]} == set(ids[-5:])
        assert get(f"{url}/metrics/cost?window=1h")[1]["span_count"] == 8
    with pytest.raises(ValueError, match="max_indexed_spans"):
        Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=LOCAL), max_indexed_spans=0)


def test_memory_only_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_leftover_threads: None) -> None:
    monkeypatch.chdir(tmp_path)
    with Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=LOCAL)) as tracer:
        with tracer.start("t") as trace:
            trace.record(model="gpt-4o", prompt_tokens=1, comp_tokens=1)
        tracer.flush()
    assert list(tmp_path.iterdir()) == []


def test_the_server_loop_is_not_the_callers_loop(no_leftover_threads: None) -> None:
    """In an asyncio app, the server answers while the application's own loop is blocked."""

    async def app() -> int:
        with Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=LOCAL)) as tracer:
            async with tracer.start("t") as trace:
                trace.record(model="gpt-4o", prompt_tokens=1, comp_tokens=1)
            tracer.flush()
            # A blocking call on the application's loop: a server on this loop could never answer it.
            status, body = get(f"{local(tracer.server_url)}/metrics/cost?window=1h")
            assert status == 200
            return int(body["span_count"])

    assert asyncio.run(app()) == 1


def test_threads_share_one_tracer(no_leftover_threads: None) -> None:
    recording = RecordingTransport()
    with Tracer(transport=recording, http_server=HTTPServerConfig(addr=LOCAL)) as tracer:

        def work(n: int) -> None:
            for i in range(50):
                with tracer.start("t") as trace:
                    trace.record(model="gpt-4o", provider="openai", prompt_tokens=n * 100 + i, comp_tokens=i)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
        tracer.flush()
        body = get(f"{local(tracer.server_url)}/metrics/cost?window=1h")[1]
    assert body["span_count"] == 400
    assert body["total_usd"] == total_usd([s.cost_usd or 0.0 for s in recording.spans])


def test_a_full_backlog_drops_and_counts_instead_of_blocking(no_leftover_threads: None) -> None:
    from tokentrace.producers.inprocess import InProcess

    inprocess = InProcess(max_pending=10)
    try:
        span = Span(trace_id="t", span_id="s", name="n", model="gpt-4o", prompt_tokens=1)
        inprocess.add([span] * 11)
        assert inprocess.dropped == 11
    finally:
        inprocess.close()


def test_close_is_idempotent_and_spans_after_it_are_dropped(no_leftover_threads: None) -> None:
    tracer = Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr=LOCAL))
    tracer.close()
    tracer.close()
    with tracer.start("t") as trace:
        trace.record(model="gpt-4o", prompt_tokens=1, comp_tokens=1)
    assert tracer._inprocess is not None and tracer._inprocess.dropped == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_has_no_aggregator_and_does_not_hang() -> None:
    script = """
import os, sys
from tokentrace.producers import HTTPServerConfig, NoopTransport, Tracer
tracer = Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr="127.0.0.1:0"))
pid = os.fork()
if pid == 0:
    with tracer.start("t") as trace:
        trace.record(model="gpt-4o", prompt_tokens=1, comp_tokens=1)
    tracer.flush(5)
    tracer.close()
    os._exit(0 if tracer._inprocess.dropped == 1 else 3)
_, status = os.waitpid(pid, 0)
tracer.close()
sys.exit(os.waitstatus_to_exitcode(status))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "was forked from the one that started it" in result.stderr


def test_interpreter_exit_without_close_evaluates_stops_and_exits() -> None:
    """A script that never closes its tracer still gets its last alert round and exits promptly."""
    script = """
from tokentrace.producers import AlertRule, HTTPServerConfig, NoopTransport, StdoutDelivery, Tracer
rule = AlertRule(name="spend", metric="total_cost", op=">", threshold=0.001, delivery=StdoutDelivery())
tracer = Tracer(transport=NoopTransport(), alerts=[rule], http_server=HTTPServerConfig(addr="127.0.0.1:0"))
with tracer.start("t") as trace:
    trace.record(model="gpt-4o", provider="openai", prompt_tokens=10_000, comp_tokens=10)
"""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    [payload] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (payload["alert"], payload["status"]) == ("spend", "firing")


def test_importing_the_sdk_does_not_import_the_server() -> None:
    script = (
        "import sys; import tokentrace.producers as p; p.Tracer(transport=p.NoopTransport()).close(); "
        "bad = [m for m in ('aiohttp', 'tokentrace.api', 'tokentrace.alerting', 'tokentrace.config') if m in sys.modules]; "
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


# --- the quickstart scripts ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_example(script: str, *args: str, wait: bool) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    command = [sys.executable, str(EXAMPLES / script), "--addr", f"127.0.0.1:{port}", "--documents", "20", *args]
    if wait:
        command.append("--wait")
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    return process, f"http://127.0.0.1:{port}"


def read_until_done(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        if line.strip() == "done":
            return lines
        lines.append(line)
    raise AssertionError(f"script ended early: {process.stderr.read() if process.stderr else ''}")


def check_output(lines: list[str], cost_body: dict[str, Any] | None) -> None:
    """Every span printed (all Span fields), the alert printed once with the stdout delivery's payload, and the
    metrics the spans add up to."""
    objects = [json.loads(line) for line in lines]
    spans = [o for o in objects if "trace_id" in o]
    alerts = [o for o in objects if "alert" in o]
    assert len(spans) == 20 and len(objects) == 21
    for span in spans:
        assert span.keys() >= {"trace_id", "span_id", "name", "model", "provider", "prompt_tokens", "comp_tokens"}
        assert span.keys() >= {"total_tokens", "cost_usd", "latency_ms", "status", "started_at", "ended_at"}
        assert (span["name"], span["model"], span["status"]) == ("summarize-document", "gpt-4o", "ok")
    expected = total_usd([s["cost_usd"] for s in spans])
    assert expected > 5.0
    [alert] = alerts
    assert alert.keys() >= {"alert", "fired_at", "metric", "value", "threshold", "window"}
    assert (alert["alert"], alert["metric"], alert["threshold"], alert["window"]) == (
        "hourly-cost-spike",
        "total_cost",
        5.0,
        "1h",
    )
    # The timer may fire while spans are still coming in: the value is the spend so far when it crossed $5.
    costs = [s["cost_usd"] for s in spans]
    assert alert["value"] > 5.0 and alert["fired_at"].endswith("Z")
    assert any(alert["value"] == total_usd(costs[:k]) for k in range(1, len(costs) + 1))
    if cost_body is not None:  # the README's cost body, with the totals the printed spans add up to
        assert {k: cost_body[k] for k in ("total_usd", "by_model", "window", "span_count")} == {
            "total_usd": expected,
            "by_model": {"gpt-4o": expected},
            "window": "1h",
            "span_count": 20,
        }


@pytest.mark.parametrize("script", ["quickstart.py", "quickstart_asyncio.py", "quickstart_threads.py"])
def test_quickstart_serves_metrics_alerts_once_and_exits(script: str) -> None:
    process, url = run_example(script, "--alert-interval", "0.2s", wait=True)
    try:
        before = read_until_done(process)
        status, body = get(f"{url}/metrics/cost?window=1h")
        assert status == 200
        assert get(f"{url}/health")[1]["status"] == "ok"
        assert process.stdout is not None
        deadline = time.monotonic() + 10
        alerts = [line for line in before if '"alert"' in line]
        while not alerts and time.monotonic() < deadline:  # the timer's round fires it
            line = process.stdout.readline()
            before.append(line)
            alerts = [line for line in before if '"alert"' in line]
        time.sleep(1)  # five more rounds: no repeat within the cooldown
        started = time.monotonic()
        rest, errors = process.communicate("\n", timeout=20)
        assert process.returncode == 0, errors
        assert time.monotonic() - started < 8
    finally:
        process.kill()
    check_output(before + rest.splitlines(keepends=True), body)


def test_quickstart_without_waiting_alerts_at_close_and_exits_promptly() -> None:
    """The default 15s timer never ticks in a short script: close() evaluates once more, then exits."""
    started = time.monotonic()
    process, _ = run_example("quickstart.py", wait=False)
    out, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert time.monotonic() - started < 15
    lines = [line for line in out.splitlines() if line.strip() != "done"]
    check_output(lines, None)


class _Receiver:
    """A webhook receiver on a thread: collects JSON bodies."""

    def __init__(self, received: list[dict[str, Any]]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
