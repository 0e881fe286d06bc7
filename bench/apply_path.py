"""Benchmark: the per-span hot path of the worker (``Applier.apply``) and of embedded ingest, beside msgspec.

Every figure is spans per CPU-second of one process (``time.process_time``: the machine is shared, so wall
time would measure the neighbours), the median of ``--rounds`` rounds; each round runs in a fresh child
process that builds its data with a fixed seed, warms up once and keeps the best of five repetitions (the
one least disturbed by other processes on the same cores). The timestamp caches are emptied before each
repetition, so no repetition reads a timestamp the process has formatted or parsed before.

Workloads:

- ``worker 10m``: ``Applier.apply`` over 100-span wire messages of ``benchkit.spans.make_spans`` (the spans of
  the distributed benchmarks and the test harness: 3 models x 3 callers, a ``workflow`` attribute, 60 % scored,
  priced) started over the last 10 minutes,
  round-robin over 4 partitions, into fresh entries (the workload of the issue's profile);
- ``worker 1m``: the same spans started over the last minute (as ``bench/processor_throughput.py``);
- ``..., apply_many``: the same messages, 10 at a time per partition through ``Applier.apply_many``;
- ``embedded``: what ``POST /spans`` does after reading the body, in-process: ``decode_json_spans``,
  ``prepare_batch`` (stamp, bounds, price), ``encode_wire`` (the WAL payload) and the store's count of durable
  spans (``EmbeddedStore.apply_recovered``: timeline and trace index), for 1000-span ``DemoTraffic`` batches.

Baselines, same child process, same bytes: untyped ``msgspec.msgpack.decode`` of the worker messages and
untyped ``msgspec.json.decode`` of the embedded bodies (no ``Span`` validation, so they do not move when the
span code changes). ``--against REV`` (repeatable) runs the same rounds on the code of a git revision
(exported with ``git archive``) or of a source tree, alternating with the working tree, and reports each
variant's ratio to the first one named. Code without ``EmbeddedStore.apply_recovered`` gives no ``embedded``
figure, as code without ``apply_many`` gives no ``apply_many`` figures.

    .venv/bin/python bench/apply_path.py [--rounds 5] [--against REV ...] [--append-results]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchkit.server import append_results
from benchkit.variants import ROOT, add_against_option, link_tree, variant_source

WORKER_SPANS = 20_000
MESSAGE_SPANS = 100
EMBEDDED_BATCHES = 20
EMBEDDED_BATCH = 1000
REPETITIONS = 5
BATCH_MESSAGES = 10
#: Order of the figures a child reports.
FIGURES = (
    "msgpack decode (baseline)",
    "worker 10m",
    "worker 1m",
    "worker 10m, apply_many",
    "worker 1m, apply_many",
    "json decode (baseline)",
    "embedded",
)


def _cpu_rate(spans: int, run: Callable[[], object]) -> float:
    """Spans per CPU-second of ``run``: the best of ``REPETITIONS`` after one warm-up, each from cold
    timestamp caches."""
    _forget_timestamps()
    run()
    best = float("inf")
    for _ in range(REPETITIONS):
        _forget_timestamps()
        began = time.process_time()
        run()
        best = min(best, time.process_time() - began)
    return spans / best


def _forget_timestamps() -> None:
    """Empty ``tokentrace.core.timefmt``'s caches: the data was formatted in this process, and the previous
    repetition saw the same timestamps, while a server sees each once. Code older than ``clear_caches`` kept
    its caches in module globals: reloading the module binds them anew, empty (its functions, wherever
    imported, read them from the module's namespace, which a reload reuses)."""
    from tokentrace.core import timefmt

    clear = getattr(timefmt, "clear_caches", None)
    if clear is None:
        importlib.reload(timefmt)
    else:
        clear()


def _worker_figures(spread_ms: int) -> tuple[float, float, float | None]:
    """Untyped decode, ``apply`` per message and ``apply_many`` of ``BATCH_MESSAGES`` messages (None when the
    code measured has no ``apply_many``)."""
    import random

    import msgspec
    from benchkit.spans import make_spans

    from tokentrace.api.embedded import price_table
    from tokentrace.config import Config
    from tokentrace.core.codec import encode_wire
    from tokentrace.core.timefmt import now_ms
    from tokentrace.core.timeline import TimelineSettings
    from tokentrace.processors.state import Applier
    from tokentrace.view.schema import Entry

    spans = make_spans(WORKER_SPANS, random.Random(1), spread_ms=spread_ms)
    messages = [encode_wire(spans[i : i + MESSAGE_SPANS]) for i in range(0, len(spans), MESSAGE_SPANS)]
    applier = Applier(TimelineSettings(), price_table(Config()), 300_000)
    arrival = now_ms()

    def apply_all() -> None:
        entries: dict[bytes, Entry] = {}
        for offset, message in enumerate(messages):
            applier.apply(entries, offset % 4, offset, arrival, message)

    def apply_batches() -> None:
        entries: dict[bytes, Entry] = {}
        by_partition: dict[int, list[tuple[int, int, bytes | None]]] = {}
        for offset, message in enumerate(messages):
            batch = by_partition.setdefault(offset % 4, [])
            batch.append((offset, arrival, message))
            if len(batch) == BATCH_MESSAGES:
                applier.apply_many(entries, offset % 4, batch)
                batch.clear()
        for partition, batch in by_partition.items():
            applier.apply_many(entries, partition, batch)

    def decode_all() -> None:
        for message in messages:
            msgspec.msgpack.decode(message)

    batched = _cpu_rate(len(spans), apply_batches) if hasattr(applier, "apply_many") else None
    return _cpu_rate(len(spans), decode_all), _cpu_rate(len(spans), apply_all), batched


def _embedded_figures() -> tuple[float, float | None]:
    """Untyped JSON decode, and embedded ingest in-process (None when the code measured has no
    ``EmbeddedStore.apply_recovered``)."""
    import msgspec

    from tokentrace.api.embedded import embedded_settings, price_table
    from tokentrace.api.stores.embedded import EmbeddedStore
    from tokentrace.config import Config
    from tokentrace.core.codec import decode_json_spans, encode_json, encode_wire
    from tokentrace.core.ingest import prepare_batch
    from tokentrace.core.timefmt import now_ms, parse_duration
    from tokentrace.producers.demo import DemoTraffic

    traffic = DemoTraffic(1)
    at = now_ms() - 60_000
    bodies = [
        encode_json(traffic.next_batch(EMBEDDED_BATCH, at_ms=at)[:EMBEDDED_BATCH]) for _ in range(EMBEDDED_BATCHES)
    ]
    config = Config()
    pricer = price_table(config)
    skew_ms = round(parse_duration(config.aggregation.max_future_skew) * 1000)
    spans = EMBEDDED_BATCH * EMBEDDED_BATCHES

    def ingest_all() -> None:
        with tempfile.TemporaryDirectory(prefix="tokentrace-bench-") as tmp:
            store = EmbeddedStore(Path(tmp), embedded_settings(config))  # never opened: no WAL, no tasks
            for body in bodies:
                batch = decode_json_spans(body)
                arrival = now_ms()
                prepare_batch(batch, arrival, pricer, store.oldest_allowed_ms(arrival), skew_ms)
                encode_wire(batch)
                store.apply_recovered(batch)  # counted as durable: the log's write is not measured

    def decode_all() -> None:
        for body in bodies:
            msgspec.json.decode(body)

    measured = hasattr(EmbeddedStore, "apply_recovered")
    return _cpu_rate(spans, decode_all), _cpu_rate(spans, ingest_all) if measured else None


def child() -> None:
    """One round: every figure, as JSON on stdout."""
    msgpack_base, worker_10m, batched_10m = _worker_figures(10 * 60_000)
    _, worker_1m, batched_1m = _worker_figures(60_000)
    json_base, embedded = _embedded_figures()
    figures = (msgpack_base, worker_10m, worker_1m, batched_10m, batched_1m, json_base, embedded)
    print(json.dumps(dict(zip(FIGURES, figures, strict=True))))


def run_child(source: Path, path: Path) -> dict[str, float | None]:
    """One round in a fresh process, importing tokentrace from ``source`` via ``path`` (and benchkit from this
    script's bench/); its stderr goes to ours."""
    env = dict(os.environ, PYTHONPATH=str(path))
    script = str(ROOT / "bench" / "apply_path.py")
    out = subprocess.run([sys.executable, script, "--child"], env=env, cwd=source, check=True, stdout=subprocess.PIPE)
    figures: dict[str, float | None] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return figures


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(rounds: list[dict[str, float | None]], figure: str, baseline: str) -> float | None:
    """The median over rounds of ``figure / baseline`` (None when the code measured has no such figure)."""
    return _median([(r[figure] or 0) / (r[baseline] or 1) if r[figure] is not None else None for r in rounds])


def _cell(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    add_against_option(parser)
    parser.add_argument("--append-results", action="store_true", help="append a section to bench/RESULTS.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return

    with tempfile.TemporaryDirectory(prefix="tokentrace-bench-") as tmp:
        variants: dict[str, tuple[Path, Path]] = {}
        for index, name in enumerate([*args.against, "working tree"]):
            source = ROOT if name == "working tree" else variant_source(name, Path(tmp) / f"src-{index}")
            variants[name] = (source, link_tree(source, Path(tmp) / f"path-{index}"))
        rounds: dict[str, list[dict[str, float | None]]] = {name: [] for name in variants}
        loads = [_load()]
        for index in range(args.rounds):
            order = list(variants) if index % 2 == 0 else list(reversed(variants))
            for name in order:
                rounds[name].append(run_child(*variants[name]))
                figures = {k: None if v is None else round(v) for k, v in rounds[name][-1].items()}
                print(f"round {index + 1} {name}: {json.dumps(figures)}", flush=True)
            loads.append(_load())

    print("\n".join(report(args, rounds, loads)))
    if args.append_results:
        command = "bench/apply_path.py " + " ".join(a for a in sys.argv[1:] if a != "--append-results")
        title = "Hot path: Applier.apply and embedded ingest in-process (bench/apply_path.py)"
        append_results(title, command, report(args, rounds, loads))


def report(args: argparse.Namespace, rounds: dict[str, list[dict[str, float | None]]], loads: list[str]) -> list[str]:
    """The results as Markdown: medians per variant, then every other variant's ratio to the first one (the
    median of the per-round ratios: the variants of a round ran one after the other, under the same load)."""
    names = list(rounds)
    base, others = names[0], names[1:]
    lines = [
        f"- {WORKER_SPANS:,} spans in {MESSAGE_SPANS}-span messages per worker figure ({BATCH_MESSAGES} messages "
        f"per `apply_many`); {EMBEDDED_BATCHES} batches of {EMBEDDED_BATCH} DemoTraffic spans for embedded; "
        f"{args.rounds} rounds, medians of each round's best of {REPETITIONS}; spans per CPU-second of one process",
        f"- load average before and after each round: {' | '.join(loads)}",
        "",
        "| figure | " + " | ".join(f"`{n}`" for n in names) + "".join(f" | `{n}` / `{base}`" for n in others) + " |",
        "|---|" + "---:|" * (len(names) + len(others)),
    ]
    for figure in FIGURES:
        cells = [_cell(_median([r[figure] for r in rounds[name]]), ",.0f") for name in names]
        for name in others:
            pairs = zip(rounds[name], rounds[base], strict=True)
            cells.append(_cell(_median([n[figure] / o[figure] for n, o in pairs if n[figure] and o[figure]]), ".2f"))
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    for name in names:
        worker = _ratio(rounds[name], "worker 10m", "msgpack decode (baseline)")
        embedded = _ratio(rounds[name], "embedded", "json decode (baseline)")
        lines.append(
            f"- `{name}`: worker 10m / msgpack decode = {_cell(worker, '.2f')}; "
            f"embedded / json decode = {_cell(embedded, '.2f')}"
        )
    return lines


if __name__ == "__main__":
    main()
