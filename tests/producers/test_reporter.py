"""Reporter(..., protocol="spans"): batches to POST /spans over the HTTP transport, against a real local server.

The default MIST protocol is tested in test_reporter_mist.py.
"""

from __future__ import annotations

from tests.producers.spanserver import SpanServer
from tokentrace.core.span import Span
from tokentrace.producers import Reporter


def test_reporter(span_server: SpanServer) -> None:
    with Reporter("myapp", span_server.url, protocol="spans", token="t", flush_interval=0.05) as reporter:
        reporter.report(Span(model="gpt-4o", prompt_tokens=3))
        reporter.report(Span(model="gpt-4o", prompt_tokens=4, caller="other"))
        reporter.report_many([Span(model="gpt-4o", prompt_tokens=5)])
        reporter.flush(10)
        assert reporter.stats().sent == 3
    assert [s.caller for s in span_server.spans] == ["myapp", "other", "myapp"]
    assert span_server.requests[0].headers["Authorization"] == "Bearer t"


def test_reporter_never_raises_on_a_dead_server() -> None:
    from tests.producers.spanserver import dead_url

    with Reporter("myapp", dead_url(), protocol="spans", max_retries=0, close_timeout=1.0) as reporter:
        reporter.report(Span(model="gpt-4o", prompt_tokens=3))
        reporter.flush(5)
        assert reporter.stats().dropped == 1
