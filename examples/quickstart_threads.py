"""The quickstart in a multi-threaded application (a threaded web server, a worker pool): one tracer
shared by every thread; its aggregator counts all of their spans.

    python examples/quickstart_threads.py --wait       # then: curl 'http://localhost:9090/metrics/cost?window=1h'
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tokentrace.producers import AlertRule, HTTPServerConfig, StdoutDelivery, StdoutTransport, Tracer


def call_model(prompt: str) -> tuple[int, int]:
    """A placeholder for a blocking inference call: (prompt tokens, completion tokens)."""
    time.sleep(0.01)
    return 120_000, 1_024


def handle_request(tracer: Tracer, document: int) -> None:
    """What one request handler does, on whichever thread serves it."""
    with tracer.start("summarize-document", attributes={"document": document}) as trace:
        started = time.perf_counter()
        prompt_tokens, comp_tokens = call_model("Summarize ...")
        trace.record(
            model="gpt-4o",
            provider="openai",
            prompt_tokens=prompt_tokens,
            comp_tokens=comp_tokens,
            latency_ms=(time.perf_counter() - started) * 1000,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="tokentrace quickstart, threads")
    parser.add_argument("--addr", default=":9090")
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--alert-interval", default="15s")
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args()
    rule = AlertRule(
        name="hourly-cost-spike", metric="total_cost", op=">", threshold=5.00, window="1h", delivery=StdoutDelivery()
    )
    with Tracer(
        transport=StdoutTransport(),
        alerts=[rule],
        alert_interval=args.alert_interval,
        http_server=HTTPServerConfig(addr=args.addr),
    ) as tracer:
        print(f"serving metrics on {tracer.server_url}", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda n: handle_request(tracer, n), range(args.documents)))
        tracer.flush()
        print("done", flush=True)
        if args.wait:
            sys.stdin.readline()


if __name__ == "__main__":
    main()
