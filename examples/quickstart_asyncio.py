"""The quickstart in an asyncio application: concurrent calls on the application's loop, while the
tracer's aggregator, alert timer and HTTP server run on a loop of their own in a background thread.

    python examples/quickstart_asyncio.py --wait       # then: curl 'http://localhost:9090/metrics/cost?window=1h'
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from tokentrace.producers import AlertRule, HTTPServerConfig, StdoutDelivery, StdoutTransport, Tracer


async def call_model(prompt: str) -> tuple[int, int]:
    """A placeholder for an async inference call: (prompt tokens, completion tokens)."""
    await asyncio.sleep(0.01)
    return 120_000, 1_024


async def summarize(tracer: Tracer, document: int) -> None:
    async with tracer.start("summarize-document", attributes={"document": document}) as trace:
        started = time.perf_counter()
        prompt_tokens, comp_tokens = await call_model("Summarize ...")
        trace.record(
            model="gpt-4o",
            provider="openai",
            prompt_tokens=prompt_tokens,
            comp_tokens=comp_tokens,
            latency_ms=(time.perf_counter() - started) * 1000,
        )


async def main(args: argparse.Namespace) -> None:
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
        await asyncio.gather(*(summarize(tracer, n) for n in range(args.documents)))
        tracer.flush()
        print("done", flush=True)
        if args.wait:  # the application's loop stays free while it waits
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="tokentrace quickstart, asyncio")
    parser.add_argument("--addr", default=":9090")
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--alert-interval", default="15s")
    parser.add_argument("--wait", action="store_true")
    asyncio.run(main(parser.parse_args()))
