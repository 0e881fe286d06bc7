"""The quickstart in Python: record spans, print them, alert on cost, serve metrics — one process.

    python examples/quickstart.py                      # records, prints spans, alerts, exits
    python examples/quickstart.py --wait               # ...and keeps serving until Enter (or end of input)
    curl 'http://localhost:9090/metrics/cost?window=1h'

There is no daemon to run: the tracer aggregates its own spans, evaluates the alert rule and serves the
HTTP API from a background thread. Spans and the alert payload go to stdout; the server's address to stderr.
The summarized "documents" are long enough that their cost crosses the $5.00/hour rule, so it fires once
(on its timer, or at the latest when ``close()`` runs the rules a last time).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from tokentrace.producers import AlertRule, HTTPServerConfig, StdoutDelivery, StdoutTransport, Tracer


@dataclass
class ModelUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ModelResponse:
    content: str
    usage: ModelUsage


def call_model(prompt: str) -> ModelResponse:
    """A placeholder for your actual inference call (OpenAI, Anthropic or any provider)."""
    time.sleep(0.01)
    return ModelResponse(content="...", usage=ModelUsage(prompt_tokens=120_000, completion_tokens=1_024))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tokentrace quickstart")
    parser.add_argument("--addr", default=":9090", help="where to serve metrics (HOST:PORT or :PORT)")
    parser.add_argument("--documents", type=int, default=20, help="documents to summarize")
    parser.add_argument("--alert-interval", default="15s", help="how often alert rules are evaluated")
    parser.add_argument("--wait", action="store_true", help="keep serving until a line or end of input")
    args = parser.parse_args(argv)

    # Spans go to stdout; swap StdoutTransport for FileTransport or HTTPTransport in production.
    tracer = Tracer(
        transport=StdoutTransport(),
        alerts=[
            AlertRule(
                name="hourly-cost-spike",
                metric="total_cost",
                op=">",
                threshold=5.00,
                window="1h",
                delivery=StdoutDelivery(),
            )
        ],
        alert_interval=args.alert_interval,
        http_server=HTTPServerConfig(addr=args.addr),  # the server runs in the background
    )
    with tracer:  # leaving the block closes the tracer: last alert round, server stopped, thread joined
        print(f"serving metrics on {tracer.server_url}", file=sys.stderr, flush=True)
        for _ in range(args.documents):
            trace = tracer.start("summarize-document")
            started = time.perf_counter()
            try:
                resp = call_model("Summarize the following document in two sentences: ...")
            except Exception as exc:
                trace.record_error(exc)
            else:
                trace.record(
                    model="gpt-4o",
                    provider="openai",
                    prompt_tokens=resp.usage.prompt_tokens,
                    comp_tokens=resp.usage.completion_tokens,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    status="ok",
                )  # the cost comes from the price table
            trace.end()  # hands the trace's spans to the transport and the in-process aggregator
        tracer.flush()
        print("done", flush=True)
        if args.wait:
            sys.stdin.readline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
