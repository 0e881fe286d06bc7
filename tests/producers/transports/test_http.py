"""HTTP transport against a real local aiohttp server (tests/producers/spanserver.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.producers.spanserver import SpanServer, dead_url
from tokentrace.core.pricing import PriceTable
from tokentrace.core.span import Span
from tokentrace.producers import HTTPTransport, Tracer


def spans(n: int, start: int = 0) -> list[Span]:
    return [Span(model="m", prompt_tokens=1, name=f"s{i}") for i in range(start, start + n)]


def fast(url: str, **kwargs: Any) -> HTTPTransport:
    """A transport with short delays so retry tests run quickly."""
    options: dict[str, Any] = {"backoff": 0.01, "max_backoff": 0.05, "flush_interval": 0.05, "timeout": 2.0}
    options.update(kwargs)
    return HTTPTransport(url, **options)


def test_batches_of_at_most_batch_size_in_order(span_server: SpanServer) -> None:
    transport = fast(span_server.url, batch_size=1000, flush_interval=5.0)
    sent = spans(2500)
    for i in range(0, 2500, 100):
        transport.send(sent[i : i + 100])
    transport.flush(10)
    assert [len(r.spans) for r in span_server.requests] == [1000, 1000, 500]
    assert span_server.spans == sent
    stats = transport.stats()
    assert (stats.sent, stats.dropped, stats.rejected, stats.retries, stats.queue_depth) == (2500, 0, 0, 0, 0)
    transport.close()


def test_flush_interval_sends_a_partial_batch(span_server: SpanServer) -> None:
    transport = fast(span_server.url, flush_interval=0.2)
    transport.send(spans(3))
    assert span_server.wait_for(lambda: len(span_server.spans) == 3, timeout=5)
    assert len(span_server.requests) == 1
    transport.close()


def test_batch_size_is_capped_at_1000() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        HTTPTransport("http://127.0.0.1:9", batch_size=1001)
    with pytest.raises(ValueError, match="url"):
        HTTPTransport("localhost:9090")


@pytest.mark.parametrize("status", [503, 500, 429])
def test_retries_after_server_errors(span_server: SpanServer, status: int) -> None:
    span_server.script(status, status)
    transport = fast(span_server.url)
    batch = spans(10)
    transport.send(batch)
    transport.flush(10)
    assert [r.status for r in span_server.requests] == [status, status, 202]
    assert span_server.spans == batch  # delivered once
    stats = transport.stats()
    assert (stats.sent, stats.failed_attempts, stats.retries, stats.dropped) == (10, 2, 2, 0)
    transport.close()


def test_gives_up_after_max_retries_and_counts_the_drop(span_server: SpanServer) -> None:
    span_server.script(*[503] * 10)
    transport = fast(span_server.url, max_retries=2)
    transport.send(spans(7))
    transport.flush(10)
    assert len(span_server.requests) == 3
    stats = transport.stats()
    assert (stats.sent, stats.dropped, stats.failed_attempts, stats.retries) == (0, 7, 3, 2)
    transport.close()


def test_4xx_is_not_retried(span_server: SpanServer, caplog: pytest.LogCaptureFixture) -> None:
    span_server.script(400)
    transport = fast(span_server.url)
    transport.send(spans(4))
    transport.flush(10)
    assert len(span_server.requests) == 1
    stats = transport.stats()
    assert (stats.rejected, stats.retries, stats.sent) == (4, 0, 0)
    assert "scripted 400" in caplog.text  # the server's error message is logged
    transport.send(spans(2))
    transport.flush(10)
    assert transport.stats().sent == 2  # later batches still go through
    transport.close()


def test_413_splits_the_batch(span_server: SpanServer) -> None:
    span_server.script(413)
    transport = fast(span_server.url)
    batch = spans(10)
    transport.send(batch)
    transport.flush(10)
    assert [len(r.spans) for r in span_server.requests] == [10, 5, 5]
    assert span_server.spans == batch
    assert transport.stats().sent == 10
    transport.close()


def test_bearer_token_and_content_type(span_server: SpanServer) -> None:
    transport = fast(span_server.url, token="s3cret")
    transport.send(spans(1))
    transport.flush(10)
    headers = span_server.requests[0].headers
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"
    transport.close()
    no_token = fast(span_server.url)
    no_token.send(spans(1))
    no_token.flush(10)
    assert "Authorization" not in span_server.requests[1].headers
    no_token.close()


def test_dead_endpoint_never_blocks_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    transport = fast(dead_url(), max_queue=100, batch_size=50, max_retries=3, close_timeout=1.0)
    started = time.perf_counter()
    for i in range(40):
        transport.send(spans(10, i * 10))  # 400 spans into a 100-span queue
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"send blocked for {elapsed:.3f}s"
    transport.flush(10)
    stats = transport.stats()
    assert stats.sent == 0
    assert stats.failed_attempts >= 4 and stats.retries >= 3
    assert stats.dropped >= 300  # queue overflow plus batches given up on
    started = time.perf_counter()
    transport.close()
    assert time.perf_counter() - started < 3.0
    final = transport.stats()
    assert final.dropped == 400 and final.queue_depth == 0
    assert "dropped" in caplog.text


def test_endpoint_that_comes_back(span_server: SpanServer) -> None:
    url = dead_url()
    transport = fast(url, max_retries=1)
    transport.send(spans(5))
    transport.flush(10)
    assert transport.stats().dropped == 5
    transport.close()
    again = fast(span_server.url)  # the same transport settings against a live server
    again.send(spans(5))
    again.flush(10)
    assert again.stats().sent == 5
    again.close()


def test_slow_server_does_not_slow_the_caller(span_server: SpanServer) -> None:
    span_server.delay = 0.1
    transport = fast(span_server.url, batch_size=10)
    started = time.perf_counter()
    for i in range(20):
        transport.send(spans(10, i * 10))
    assert time.perf_counter() - started < 1.0  # posting the 20 batches one by one takes >= 2 s
    transport.flush(20)
    assert transport.stats().sent == 200
    transport.close()


def test_close_delivers_what_is_queued(span_server: SpanServer) -> None:
    transport = fast(span_server.url, flush_interval=60)
    transport.send(spans(3))
    transport.close()
    assert len(span_server.spans) == 3
    transport.send(spans(1))  # after close: dropped, not raised
    assert transport.stats().dropped == 1


def test_tracer_spans_arrive_intact(span_server: SpanServer, prices: PriceTable) -> None:
    with Tracer(transport=fast(span_server.url), caller="svc", prices=prices) as tracer:
        with tracer.start("agent") as trace, trace.span("plan", model="test-model") as step:
            step.record(prompt_tokens=10, comp_tokens=2)
            trace.record(model="test-model", prompt_tokens=5, comp_tokens=1, latency_ms=12.5)
        recorded = [step.span]
    assert span_server.spans[1] == recorded[0]
    child = span_server.spans[0]
    assert child.parent_span_id == step.span_id and child.caller == "svc" and child.latency_ms == 12.5


def test_every_attempt_at_a_batch_carries_the_same_idempotency_key(span_server: SpanServer) -> None:
    span_server.script(503, 500)
    transport = fast(span_server.url, batch_size=5, flush_interval=5.0)
    transport.send(spans(10))  # two batches; the first is retried twice
    transport.flush(10)
    keys = [r.headers.get("Idempotency-Key") for r in span_server.requests]
    assert [r.status for r in span_server.requests] == [503, 500, 202, 202]
    assert keys[0] and keys[0] == keys[1] == keys[2], "a retry reuses its batch's key"
    assert keys[3] and keys[3] != keys[0], "another batch has another key"
    transport.close()
