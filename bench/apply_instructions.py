"""Benchmark: instructions per span of the worker's hot path (``Applier.apply``), counted by valgrind.

The machine is shared and a worker's CPU time per span moves by 10-15 % from one round to the next with the
neighbours' load, more than most changes to the hot path are worth. Instructions executed do not depend on
the neighbours: valgrind's callgrind counts them (deterministically, given ``PYTHONHASHSEED``), so two
revisions compare to the per mille. Instructions are not time (cache misses and branch mispredictions do not
show), but for interpreter-bound code they follow it closely.

Each variant runs twice under callgrind: once building the data (``--spans`` spans of ``benchkit.spans.make_spans`` in
500-span wire messages, a fixed clock) and once more applying them ``--passes`` times; the difference over
the spans applied is the figure. ``--heap N`` first allocates N small tracked objects, as many as a running
worker holds (Faust, aiokafka, its tables), so the cyclic collector's share is what it is in a worker.
``--against REV`` (repeatable) measures a git revision or a source tree beside the working tree.

    .venv/bin/python bench/apply_instructions.py [--heap 200000] [--against HEAD]

Needs ``valgrind`` (Debian package); about 90 s per variant on 2 cores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchkit.variants import ROOT, add_against_option, link_tree, variant_source

MESSAGE_SPANS = 500
CLOCK_MS = 1_764_000_000_000


def child(spans: int, passes: int, heap: int) -> None:
    """Build the messages, then apply them ``passes`` times (counted from outside)."""
    import random

    from benchkit.spans import make_spans

    from tokentrace.api.embedded import price_table
    from tokentrace.config import Config
    from tokentrace.core.codec import encode_wire
    from tokentrace.core.timeline import TimelineSettings
    from tokentrace.processors.state import Applied, Applier
    from tokentrace.view.schema import Entry

    built = make_spans(spans, random.Random(1), now=CLOCK_MS, spread_ms=60_000)
    messages = [encode_wire(built[i : i + MESSAGE_SPANS]) for i in range(0, len(built), MESSAGE_SPANS)]
    del built
    kept = [{"object": [i]} for i in range(heap)]  # a worker-sized heap of tracked objects
    applier = Applier(TimelineSettings(), price_table(Config()), 300_000)
    held: list[Applied] = []  # the spans of the last messages stay alive, as until a worker's next flush
    for _ in range(passes):
        entries: dict[bytes, Entry] = {}
        for offset, message in enumerate(messages):
            held.append(applier.apply(entries, offset % 4, offset, CLOCK_MS, message))
            if len(held) > 20:
                held.clear()
    assert len(kept) == heap


def instructions(path: str, spans: int, passes: int, heap: int) -> int:
    """Instructions callgrind counted for one child run importing tokentrace from ``path``."""
    with tempfile.TemporaryDirectory(prefix="tokentrace-callgrind-") as tmp:
        env = dict(os.environ, PYTHONPATH=path, PYTHONHASHSEED="0")
        argv = [sys.executable, __file__, "--child", str(passes), "--spans", str(spans), "--heap", str(heap)]
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *argv],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind: {out.stderr[-2000:]}")
    return int(found.group(1))


def per_span(path: str, spans: int, passes: int, heap: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        base = pool.submit(instructions, path, spans, 0, heap)
        applied = pool.submit(instructions, path, spans, passes, heap)
        return (applied.result() - base.result()) / (spans * passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--heap", type=int, default=200_000)
    add_against_option(parser)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.spans, args.child, args.heap)
        return
    with tempfile.TemporaryDirectory(prefix="tokentrace-bench-") as tmp:
        paths = {"working tree": f"{link_tree(ROOT, Path(tmp) / 'path-0')}{os.pathsep}{ROOT}"}
        for index, name in enumerate(args.against, start=1):
            source = variant_source(name, Path(tmp) / f"src-{index}")
            paths[name] = f"{link_tree(source, Path(tmp) / f'path-{index}')}{os.pathsep}{source}"
        figures = {}
        for name, path in paths.items():
            figures[name] = per_span(path, args.spans, args.passes, args.heap)
            print(f"{name}: {figures[name]:,.0f} instructions per span", flush=True)
    first = next(iter(figures.values()))
    print(f"\n{args.spans:,} spans x {args.passes} passes, {MESSAGE_SPANS}-span messages, heap {args.heap:,} objects")
    print("| variant | instructions per span | / first |\n|---|---:|---:|")
    for name, value in figures.items():
        print(f"| `{name}` | {value:,.0f} | {value / first:.3f} |")


if __name__ == "__main__":
    main()
