"""Benchmark: the web console. Page weight, overview render time over a big state, server CPU of 10 consoles.

- Page weight: what a first load of the overview fetches before any data (HTML, scripts, styles, the
  vendored uPlot), as sent (gzip), read from the browser's own responses; the JSON of that first load apart.
- Render time: Debian's chromium (Playwright, headless) opens ``/?window=<w>&groupby=model`` on a
  ``tokentrace serve`` holding a big state (``benchkit.state``, as bench/metrics_query.py builds it: per-bucket
  aggregates over the 30-day retention, loaded from a snapshot), from navigation start to the console's
  ``tokentrace:overview-rendered`` mark (figures and five charts drawn); median of ``--renders`` loads.
- Server CPU: the server's user + system CPU over ``--seconds`` with no browser (idle baseline), then with
  10 overview pages open and auto-refreshing (every 30 s, plus the health strip every 15 s), as % of a core.
  The browser's own CPU is not counted; it runs on the same 2 shared cores, so the load average is reported.

    .venv/bin/python bench/console.py [--spans 2000000] [--seconds 60] [--weight-only] [--append-results]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit.chromium import launch
from benchkit.server import Server, append_results
from benchkit.state import build_timeline, write_snapshot

WINDOWS = ["1h", "24h", "7d", "30d"]


def page_weight(context: Any, url: str) -> tuple[int, int, int, int]:
    """(static bytes as sent, data bytes as sent, data bytes inflated, requests) of a first load of the overview.

    The JSON inflated is what it weighed as sent before JSON answers were gzipped."""
    page = context.new_page()
    sizes: dict[str, list[int]] = {"static": [], "data": [], "inflated": []}

    def on_response(response: Any) -> None:
        body = len(response.body())
        encoded = int(response.headers.get("content-length", body))
        if response.headers.get("content-type", "").startswith("application/json"):
            sizes["data"].append(encoded)
            sizes["inflated"].append(body)
        else:
            sizes["static"].append(encoded)

    page.on("response", on_response)
    page.goto(f"{url}/?window=1h&groupby=model", wait_until="networkidle")
    page.close()
    requests = len(sizes["static"]) + len(sizes["data"])
    return sum(sizes["static"]), sum(sizes["data"]), sum(sizes["inflated"]), requests


def render_ms(context: Any, url: str, window: str) -> float:
    page = context.new_page()
    page.goto(f"{url}/?window={window}&groupby=model&refresh=off")
    page.wait_for_function(
        "() => performance.getEntriesByName('tokentrace:overview-rendered').length > 0", timeout=120_000
    )
    value = float(page.evaluate("() => performance.getEntriesByName('tokentrace:overview-rendered')[0].startTime"))
    page.close()
    return value


def cpu_share(server: Server, seconds: float) -> float:
    before, began = server.cpu_s(), time.monotonic()
    time.sleep(seconds)
    return 100 * (server.cpu_s() - before) / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=2_000_000)
    parser.add_argument("--pool", type=int, default=24, help="distinct minute buckets the state copies")
    parser.add_argument("--renders", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--consoles", type=int, default=10)
    parser.add_argument("--weight-only", action="store_true", help="stop after the page weight")
    parser.add_argument("--append-results", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(f"- {line}")

    with tempfile.TemporaryDirectory(prefix="tokentrace-console-bench-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        timeline, timings = build_timeline(args.spans, args.pool, seed=11)
        asyncio.run(write_snapshot(work / "data", timeline, args.spans))
        del timeline
        say(
            f"state: {args.spans:,} spans over the 30-day retention ({timings['fine_buckets']:,} minute + "
            f"{timings['coarse_buckets']:,} hour buckets, 60 series, one grouped attribute), built and "
            f"snapshotted in {time.perf_counter() - began:.1f} s"
            + (" (smaller than the 10M of bench/metrics_query.py)" if args.spans < 10_000_000 else "")
        )
        began = time.perf_counter()
        server = Server(work / "data")
        say(f"`tokentrace serve` loaded it in {time.perf_counter() - began:.1f} s")
        try:
            with sync_playwright() as playwright:
                context = launch(playwright, work / "profile")
                static, data, inflated, requests = page_weight(context, server.url)
                say(
                    f"page weight before data: {static / 1024:.1f} KiB as sent (gzip) in the static files of a first "
                    f"load (budget 300 KiB); that load's JSON: {data / 1024:.1f} KiB as sent (gzip), "
                    f"{inflated / 1024:.1f} KiB inflated; {requests} requests"
                )
                if args.weight_only:
                    context.close()
                    return
                for window in WINDOWS:
                    times = sorted(render_ms(context, server.url, window) for _ in range(args.renders))
                    say(
                        f"overview `window={window}&groupby=model` rendered in {statistics.median(times):.0f} ms "
                        f"(median of {args.renders}; min {times[0]:.0f}, max {times[-1]:.0f}) from navigation start"
                    )
                idle = cpu_share(server, args.seconds / 2)
                pages = [context.new_page() for _ in range(args.consoles)]
                for page in pages:
                    page.goto(f"{server.url}/?window=1h&groupby=model")
                for page in pages:
                    page.wait_for_function(
                        "() => performance.getEntriesByName('tokentrace:overview-rendered').length > 0"
                    )
                busy = cpu_share(server, args.seconds)
                say(
                    f"server CPU: idle {idle:.2f} % of a core (over {args.seconds / 2:.0f} s); with {args.consoles} "
                    f"overview consoles auto-refreshing (1h, by model) {busy:.2f} % (over {args.seconds:.0f} s): "
                    f"{busy - idle:.2f} points for the consoles"
                )
                context.close()
        finally:
            server.stop()
    if args.append_results:
        append_results("Web console (bench/console.py)", "bench/console.py " + " ".join(sys.argv[1:]), lines)


if __name__ == "__main__":
    main()
