"""Benchmark: a full cycle collection over state a running embedded server built itself, beside the Python path.

A server restarted on its snapshot moves the loaded state out of the collector's sight (``gc.freeze``), but
what it counts afterwards stays in sight: after weeks of uptime, each full collection walks every aggregate it
built, holding the GIL (so the event loop) all the while. This script builds the same state twice in fresh child
processes, through ``EmbeddedStore.apply_recovered`` (memory only) from spans spread over 30 days:

- ``compiled``: this install as the server runs it (the compiled kernel; aggregates' count lists untracked);
- ``python``: ``TOKENTRACE_NATIVE=0``, the Python reference path, whose lists the collector tracks (the
  baseline: every aggregate was built that way before native/src/untrack.rs).

Each child reports the objects the collector tracks and the median of three ``gc.collect()`` timings (memory
is bench/metrics_query.py's: this state is built span by span in memory, not as a server holds it).

    .venv/bin/python bench/gc_pause.py [--spans 1000000] [--days 30]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time

from benchkit.procfs import load
from benchkit.server import machine
from benchkit.spans import make_spans

from tokentrace.api.stores.embedded import EmbeddedSettings, EmbeddedStore
from tokentrace.core import native
from tokentrace.core.timefmt import now_ms

DAY_MS = 86_400_000


async def build(spans: int, days: int) -> EmbeddedStore:
    """A memory-only store that counted ``spans`` spans over the last ``days`` days, 10k at a time."""
    store = EmbeddedStore(None, EmbeddedSettings(maintenance_interval_s=3600))
    await store.open()
    rng = random.Random(7)
    now = now_ms()
    for done in range(0, spans, 10_000):
        batch = make_spans(min(10_000, spans - done), rng, now - 60_000, spread_ms=days * DAY_MS - 2 * 3_600_000)
        store.apply_recovered(batch)
    store.maintain_now()  # minutes past the fine retention fold into hours, as the running server's would
    return store


def child(spans: int, days: int) -> None:
    gc.collect()
    gc.freeze()  # what the server does after start-up: only what is counted from here on is in sight
    started = time.process_time()
    store = asyncio.run(build(spans, days))
    build_s = time.process_time() - started
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        gc.collect()
        timings.append(time.perf_counter() - began)
    report = {
        "native": native.AVAILABLE,
        "span_total": store.span_total,
        "tracked": len(gc.get_objects()),
        "collect_ms": statistics.median(timings) * 1000,
        "build_cpu_s": build_s,
    }
    print(json.dumps(report))


def run_child(spans: int, days: int, *, compiled: bool) -> dict[str, float]:
    env = {**os.environ, "TOKENTRACE_NATIVE": "1" if compiled else "0"}
    argv = [sys.executable, __file__, "--child", "--spans", str(spans), "--days", str(days)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.spans, args.days)
        return
    print(f"- {machine()}; {args.spans:,} spans over {args.days} days; load before: {load()}")
    results = {name: run_child(args.spans, args.days, compiled=name == "compiled") for name in ("python", "compiled")}
    if not results["compiled"]["native"]:
        print("  (the compiled module is not built: both runs took the Python path)")
    for name, r in results.items():
        print(
            f"  - {name}: {r['span_total']:,.0f} spans counted; {r['tracked']:,.0f} objects tracked; full collection "
            f"{r['collect_ms']:.0f} ms (median of 3); built in {r['build_cpu_s']:.1f} CPU-s"
        )
    ratio = results["compiled"]["collect_ms"] / max(results["python"]["collect_ms"], 1e-9)
    print(f"  - full collection compiled / python = {ratio:.3f}")


if __name__ == "__main__":
    main()
