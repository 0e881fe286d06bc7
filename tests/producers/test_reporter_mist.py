"""Reporter(source, url): seed-001 MIST messages, against a real ``tokentrace serve`` and a recording server."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.request
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tests.api.server_process import ServerProcess
from tests.producers.spanserver import dead_url
from tokentrace.api.embedded import price_table
from tokentrace.config import parse_config
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms, now_ms, parse_rfc3339_ms
from tokentrace.producers import Reporter, Tracer
from tokentrace.producers.transports.mist import MistTransport


class _Raw(msgspec.Struct):
    version: str
    id: str
    source: str
    type: str
    timestamp_ns: int
    payload: msgspec.Raw
    checksum: int


class RecordingServer:
    """Answers ``POST /mist`` like the seed's Go server (202, empty body) unless scripted otherwise."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, str], bytes]] = []
        self.script: deque[int] = deque()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = outer.script.popleft() if outer.script else 202
                outer.bodies.append((self.path, dict(self.headers), body))
                answer = b"" if status == 202 else b'{"error": "scripted"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/base"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("reporter") / "data", extra=["--max-spans", "6"])
    process.start()
    yield process
    process.stop()


def get(server: ServerProcess, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=10) as response:
        return json.load(response)


def test_messages_are_mist_envelopes_with_a_valid_checksum(recorder: RecordingServer) -> None:
    started = format_ms(now_ms() - 1000)
    span = Span(trace_id="t", name="op <&>", model="gpt-4o", prompt_tokens=3, latency_ms=2.5, started_at=started)
    before = time.time_ns()
    with Reporter("svc", recorder.url, token="tok") as reporter:
        reporter.report(span)
        reporter.report(msgspec.structs.replace(span, caller="other"))
        reporter.flush(10)
        assert reporter.stats().sent == 2  # an empty 202 counts as sent
    assert [path for path, _, _ in recorder.bodies] == ["/base/mist", "/base/mist"]
    _, headers, body = recorder.bodies[0]
    assert headers["Authorization"] == "Bearer tok" and headers["Content-Type"] == "application/json"
    sources = []
    for _, _, body in recorder.bodies:
        envelope = msgspec.json.decode(body, type=_Raw)
        raw = bytes(envelope.payload)
        assert envelope.checksum == zlib.crc32(raw) != 0
        assert (envelope.version, envelope.type, len(envelope.id)) == ("1", "trace.span", 32)
        assert before <= envelope.timestamp_ns <= time.time_ns()
        sources.append(envelope.source)
        payload = json.loads(raw)
        assert payload["operation"] == "op <&>" and payload["trace_id"] == "t"
        assert payload["end_ns"] - payload["start_ns"] == 2_500_000
        assert payload["attrs"] == {"model": "gpt-4o", "tokens_in": 3}
    assert sources == ["svc", "other"]


def test_retries_5xx_and_rejects_4xx_without_retrying(recorder: RecordingServer) -> None:
    recorder.script.extend([503, 503, 400])
    with Reporter("svc", recorder.url, backoff=0.01, max_retries=3) as reporter:
        reporter.report(Span(model="m", prompt_tokens=1))
        reporter.flush(10)
        reporter.report(Span(model="m", prompt_tokens=2))
        reporter.flush(10)
        stats = reporter.stats()
    assert (stats.sent, stats.rejected, stats.retries, stats.failed_attempts, stats.dropped) == (1, 1, 2, 3, 0)
    assert len(recorder.bodies) == 4


def test_never_blocks_or_raises_on_a_dead_server() -> None:
    reporter = Reporter("svc", dead_url(), max_retries=1, backoff=0.01, close_timeout=1.0)
    began = time.monotonic()
    for i in range(500):
        reporter.report(Span(model="m", prompt_tokens=i))
    assert time.monotonic() - began < 0.5
    reporter.flush(10)
    reporter.close()
    assert reporter.stats().dropped == 500 and reporter.stats().sent == 0


def test_no_url_is_the_seeds_no_op_mode() -> None:
    with Reporter("svc", "") as reporter:
        reporter.report(Span(model="m", prompt_tokens=1))
        assert reporter.stats().name == "noop"


def test_protocol_is_checked() -> None:
    with pytest.raises(ValueError, match="protocol"):
        Reporter("svc", "http://127.0.0.1:1", protocol="grpc")  # type: ignore[arg-type]
    assert Reporter("svc", "http://127.0.0.1:1", protocol="spans").app == "svc"


def test_end_to_end_against_tokentrace_serve(server: ServerProcess) -> None:
    """Spans reported over MIST come back from the real server field for field; cost priced when absent."""
    start = now_ms() - 30_000
    spans = [
        Span(
            trace_id="e2e",
            span_id="root",
            name="summarize",
            model="gpt-4o",
            provider="openai",
            prompt_tokens=1000,
            comp_tokens=200,
            cost_usd=0.0125,
            latency_ms=812.345,
            started_at=format_ms(start),
            status="error",
            error="boom",
            attributes={"eval.score": 0.75, "workflow": "docs", "retry": 1, "cached": False},
        ),
        Span(
            trace_id="e2e",
            span_id="child",
            parent_span_id="root",
            name="draft",
            model="gpt-4o-mini",
            provider="openai",
            prompt_tokens=400,
            comp_tokens=100,
            latency_ms=95.0,
            started_at=format_ms(start + 1),
            caller="drafter",
        ),
        Span(
            trace_id="e2e",
            span_id="t",
            name="total-only",
            model="mine",
            total_tokens=9,
            started_at=format_ms(start + 2),
        ),
    ]
    with Reporter("summarizer", server.url) as reporter:
        reporter.report_many(spans)
        reporter.flush(10)
        assert reporter.stats().sent == 3
    got = {s["span_id"]: s for s in get(server, "/traces/e2e")["spans"]}
    expected_cost = price_table(parse_config("")).cost("gpt-4o-mini", 400, 100, provider="openai")
    for span in spans:
        back = got[span.span_id]
        want = msgspec.to_builtins(span)
        want["caller"] = span.caller or "summarizer"
        want["attributes"] = {"mist.operation": span.name, **span.attributes}
        want["ended_at"] = format_ms(parse_rfc3339_ms(str(span.started_at)) + int(span.latency_ms or 0))
        if span.span_id == "child":
            want["cost_usd"] = expected_cost
        assert back == want, span.span_id
    stats = get(server, "/stats")
    assert stats["by_operation"] == {
        "summarize": {"count": 1, "errors": 1},
        "draft": {"count": 1, "errors": 0},
        "total-only": {"count": 1, "errors": 0},
    }
    assert (stats["total_tokens_in"], stats["total_tokens_out"], stats["unpriced_span_count"]) == (1400, 300, 1)


def test_a_tracer_can_report_over_mist_and_recent_is_newest_first_capped_by_max_spans(server: ServerProcess) -> None:
    """``serve --max-spans 6``: /traces/recent answers the newest spans first, from the three newest traces."""
    transport = MistTransport(server.url, "agent")
    tracer = Tracer(transport=transport, caller="")
    for i in range(4):
        with tracer.start(f"job-{i}") as trace:
            trace.record(model="gpt-4o", provider="openai", prompt_tokens=10 + i, comp_tokens=1, latency_ms=5)
            time.sleep(0.002)
            trace.record(model="gpt-4o", provider="openai", prompt_tokens=20 + i, comp_tokens=1, latency_ms=5)
        time.sleep(0.002)
    tracer.close()
    assert transport.stats().sent == 8
    recent = get(server, "/traces/recent?limit=100")["spans"]
    assert [s["attrs"]["tokens_in"] for s in recent] == [23, 13, 22, 12, 21, 11]
    assert [s["start_ns"] for s in recent] == sorted((s["start_ns"] for s in recent), reverse=True)


def test_a_retried_mist_message_carries_the_same_idempotency_key(recorder: RecordingServer) -> None:
    recorder.script.extend([503])
    with Reporter("app", recorder.url, backoff=0.01) as reporter:
        reporter.report(Span(name="a", model="m", prompt_tokens=1))
        reporter.report(Span(name="b", model="m", prompt_tokens=1))
    keys = [headers.get("Idempotency-Key") for _, headers, _ in recorder.bodies]
    assert len(keys) == 3 and keys[0] and keys[0] == keys[1] != keys[2]
