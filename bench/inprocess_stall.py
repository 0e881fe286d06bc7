"""Is the in-process mode in the application's way? How long ``Trace.record`` calls take while the tracer's
aggregator thread counts the spans and a client keeps querying its HTTP API, beside the same loop with
in-process mode off.

The application thread records one-span traces back to back for ``--seconds`` (a trace ends after each
call, so every span is handed to the aggregator at once); with in-process mode on, a second thread asks
``GET /metrics?window=1h&groupby=user`` over and over. Each record+end is timed: a long one means the
application waited (for the GIL, held by the aggregator or the server, or for a core). Percentiles of those
times, and spans counted vs. dropped, are printed: dropped are the spans recorded that the in-process server's
``GET /health`` does not count (``span_count``) once the tracer is flushed.

    .venv/bin/python bench/inprocess_stall.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence

from tokentrace.producers import HTTPServerConfig, NoopTransport, Tracer


def run(tracer: Tracer, seconds: float, query: bool) -> tuple[list[float], int]:
    """Record-and-end durations in µs, and how many queries were answered meanwhile."""
    stop = threading.Event()
    answered = 0

    def queries() -> None:
        nonlocal answered
        url = base_url(tracer) + "/metrics?window=1h&groupby=user"
        while not stop.is_set():
            with urllib.request.urlopen(url, timeout=30) as response:
                response.read()
            answered += 1

    client = threading.Thread(target=queries) if query else None
    if client is not None:
        client.start()
    durations: list[float] = []
    deadline = time.perf_counter() + seconds
    n = 0
    while (now := time.perf_counter()) < deadline:
        trace = tracer.start("bench")
        trace.record(
            model="gpt-4o",
            provider="openai",
            prompt_tokens=512,
            comp_tokens=128,
            latency_ms=1240,
            attributes={"user": f"u{n % 50}"},
        )
        trace.end()
        durations.append((time.perf_counter() - now) * 1e6)
        n += 1
    stop.set()
    if client is not None:
        client.join()
    tracer.flush()
    return durations, answered


def base_url(tracer: Tracer) -> str:
    """The in-process server's URL to connect to (it may listen on every address)."""
    return (tracer.server_url or "").replace("0.0.0.0", "127.0.0.1")


def counted(tracer: Tracer) -> int:
    """Spans the in-process aggregator has counted: ``span_count`` of its ``GET /health``."""
    with urllib.request.urlopen(base_url(tracer) + "/health", timeout=30) as response:
        return int(json.load(response)["span_count"])


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"p50 {at(0.5):,.1f} µs · p99 {at(0.99):,.1f} µs · p99.9 {at(0.999):,.1f} µs · max {ordered[-1] / 1000:,.2f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    print(f"load avg {os.getloadavg()[0]:.2f} · switch interval {sys.getswitchinterval() * 1000:g} ms")
    with Tracer(transport=NoopTransport()) as off:
        durations, _ = run(off, args.seconds, query=False)
    print(f"off: {len(durations):,} spans · {percentiles(durations)}")
    with Tracer(transport=NoopTransport(), http_server=HTTPServerConfig(addr="127.0.0.1:0")) as on:
        durations, answered = run(on, args.seconds, query=True)
        dropped = len(durations) - counted(on)  # run() flushed: every span kept is counted
    print(
        f"on:  {len(durations):,} spans · {percentiles(durations)} · {answered} queries answered · "
        f"{dropped} spans dropped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
