"""SDK overhead: recording one span through tokentrace (no-op transport) beside one OpenTelemetry span.

Both run in the same process in many short interleaved rounds (the case order alternates), so machine
noise hits them alike. Each ns figure is the median (and the best) over rounds of the mean cost per span
within a round; each ratio is the median over rounds of that round's tokentrace/OpenTelemetry ratio, which
stays meaningful on a busy machine. tokentrace work per span:
validate the call, price it from the cached rates, generate a UUID 4 span id, stamp RFC 3339 times, build
the ``Span`` and hand it to the transport. OpenTelemetry work per span: ``start_span`` with the same
fields as attributes, then ``end`` through a ``SimpleSpanProcessor`` into an exporter that does nothing.

In-process mode (``Tracer(http_server=...)``: the server's aggregator in the application) adds the
``tt_record_inproc`` and ``tt_trace_inproc`` cases: the same calls on a tracer whose spans are also
counted in-process, each round ending with ``tracer.flush()`` (which waits until the aggregator thread has
counted every span), so the figure is the per-span cost plus the aggregate update, paired with the same
case with aggregation off. ``tt_aggregate`` is the aggregate update alone, in the calling thread (what the
aggregator thread does per span: ``prepare_spans`` and the embedded store's count, ``apply_recovered``), so
``tt_record_inproc - tt_record - tt_aggregate`` is what handing spans to another thread costs.

    .venv/bin/python bench/sdk_overhead.py                  # figures
    .venv/bin/python bench/sdk_overhead.py --append-results # ...also appended to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tokentrace.core.span import Span
from tokentrace.producers import HTTPServerConfig, NoopTransport, Tracer

Case = Callable[[int], None]
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


class _NoopExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def tokentrace_cases(tracer: Tracer, suffix: str = "") -> dict[str, Case]:

    def record(n: int) -> None:
        """``trace.record`` into an open trace, ended every 100 spans."""
        trace = tracer.start("bench")
        for i in range(n):
            trace.record(model="gpt-4o", provider="openai", prompt_tokens=512, comp_tokens=128, latency_ms=1240)
            if i % 100 == 99:
                trace.end()
                trace = tracer.start("bench")
        trace.end()

    def trace_per_span(n: int) -> None:
        """A whole one-span trace: ``with tracer.start(...)`` + ``record``."""
        for _ in range(n):
            with tracer.start("bench") as trace:
                trace.record(model="gpt-4o", provider="openai", prompt_tokens=512, comp_tokens=128, latency_ms=1240)

    def step(n: int) -> None:
        """A timed child step: ``with trace.span(...) as s: s.record(...)`` (context var, perf counter)."""
        trace = tracer.start("bench")
        for i in range(n):
            with trace.span("step", model="gpt-4o", provider="openai") as s:
                s.record(prompt_tokens=512, comp_tokens=128)
            if i % 100 == 99:
                trace.end()
                trace = tracer.start("bench")
        trace.end()

    if not suffix:
        return {"tt_record": record, "tt_trace": trace_per_span, "tt_step": step}

    def flushed(case: Case, doc: str) -> Case:
        def run(n: int) -> None:
            case(n)
            tracer.flush()

        run.__doc__ = doc
        return run

    aggregated = " Counted in-process too (round ends with ``tracer.flush()``)."
    return {
        f"tt_record{suffix}": flushed(record, (record.__doc__ or "") + aggregated),
        f"tt_trace{suffix}": flushed(trace_per_span, (trace_per_span.__doc__ or "") + aggregated),
    }


def aggregate_case() -> dict[str, Case]:
    from tokentrace.api.stores.embedded import EmbeddedStore
    from tokentrace.core.ingest import prepare_spans
    from tokentrace.core.timefmt import now_ms

    spans: list[Span] = []

    class Keep(NoopTransport):
        def send(self, batch: Sequence[Span]) -> None:
            spans.extend(batch)

    tracer = Tracer(transport=Keep(), caller="bench")
    with tracer.start("bench") as trace:
        for _ in range(2000):
            trace.record(model="gpt-4o", provider="openai", prompt_tokens=512, comp_tokens=128, latency_ms=1240)
    store = EmbeddedStore(None)  # memory-only: nothing to make durable, the spans are counted directly

    def aggregate(n: int) -> None:
        """The aggregate update alone: ``prepare_spans`` + the memory-only store's count, same thread."""
        for start in range(0, n, len(spans)):
            batch = spans[: n - start]
            arrival = now_ms()
            prepare_spans(batch, arrival, tracer.prices, store.oldest_allowed_ms(arrival), 300_000)
            store.apply_recovered(batch)

    return {"tt_aggregate": aggregate}


def otel_cases() -> dict[str, Case]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_NoopExporter()))
    otel = provider.get_tracer("bench")
    attributes: dict[str, str | int] = {"gen_ai.request.model": "gpt-4o", "gen_ai.system": "openai"}
    attributes |= {"prompt_tokens": 512, "comp_tokens": 128, "latency_ms": 1240}

    def span(n: int) -> None:
        """``start_span(name, attributes=...)`` + ``end()``."""
        for _ in range(n):
            otel.start_span("bench", attributes=attributes).end()

    def current_span(n: int) -> None:
        """``with start_as_current_span(...)`` + ``set_attributes`` (context propagation, like a step)."""
        for _ in range(n):
            with otel.start_as_current_span("bench") as s:
                s.set_attributes(attributes)

    return {"otel_span": span, "otel_current": current_span}


def measure(
    cases: dict[str, Case], spans_per_round: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU (the whole process: every thread) ns per span for each case and round; cases
    interleave within each round."""
    for case in cases.values():  # warm up: imports, price-rate derivation, caches
        case(spans_per_round // 10 or 1)
    results: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for _ in range(rounds):
        order.reverse()
        for name, case in order:
            gc.collect()
            started, started_cpu = time.perf_counter_ns(), time.process_time_ns()
            case(spans_per_round)
            results[name].append((time.perf_counter_ns() - started) / spans_per_round)
            cpu[name].append((time.process_time_ns() - started_cpu) / spans_per_round)
    return results, cpu


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def report(
    results: dict[str, list[float]], cpu: dict[str, list[float]], spans_per_round: int, rounds: int, markdown: bool
) -> str:
    median = {name: statistics.median(values) for name, values in results.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    best = {name: min(values) for name, values in results.items()}
    pairs = [("tt_record", "otel_span"), ("tt_trace", "otel_span"), ("tt_step", "otel_current")]
    pairs += [(ours + "_inproc", ours) for ours in ("tt_record", "tt_trace") if ours + "_inproc" in results]
    load = os.getloadavg()[0]
    header = (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {machine()} · load avg {load:.2f} · Python "
        f"{platform.python_version()} · opentelemetry-sdk {version('opentelemetry-sdk')} · "
        f"{rounds} rounds x {spans_per_round} spans"
    )
    rows = [
        f"| {name} | {median[name]:,.0f} | {best[name]:,.0f} | {median_cpu[name]:,.0f} | {case_doc(name)} |"
        for name in results
    ]
    paired = {
        pair: statistics.median(o / t for o, t in zip(results[pair[0]], results[pair[1]], strict=True))
        for pair in pairs
    }
    ratios = [
        f"| {ours} / {theirs} | {paired[ours, theirs]:.3f} | {best[ours] / best[theirs]:.3f} |"
        for ours, theirs in pairs
    ]
    if markdown:
        return "\n".join(
            [
                header,
                "",
                "| case | median ns/span | best ns/span | median CPU ns/span (all threads) | what |",
                "|---|---:|---:|---:|---|",
                *rows,
                "",
                "| ratio | median of paired rounds | best / best |",
                "|---|---:|---:|",
                *ratios,
                "",
                verdict(median, best, paired[("tt_record", "otel_span")]),
            ]
        )
    lines = [header, ""]
    lines += [
        f"{name:17s} {median[name]:9,.0f} ns/span (best {best[name]:,.0f}; CPU {median_cpu[name]:,.0f})"
        for name in results
    ]
    lines += [""] + [
        f"{ours} / {theirs}: {paired[ours, theirs]:.3f}x (median of paired rounds; best/best "
        f"{best[ours] / best[theirs]:.3f}x)"
        for ours, theirs in pairs
    ]
    return "\n".join(lines)


def verdict(median: dict[str, float], best: dict[str, float], ratio: float) -> str:
    """The goal (<= 5 us per recorded span and <= 0.1x OpenTelemetry), checked against these figures."""

    def yes(ok: bool) -> str:
        return "met" if ok else "not met"

    return (
        f"Goal <= 5 us/span: {yes(median['tt_record'] <= 5000)} on the median, {yes(best['tt_record'] <= 5000)} on "
        f"the best round. Goal <= 0.1x OpenTelemetry: {yes(ratio <= 0.1)} (tt_record / otel_span)."
    )


_DOCS: dict[str, str] = {}


def case_doc(name: str) -> str:
    return _DOCS.get(name, "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=2_000, help="spans per case per round")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--append-results", action="store_true", help="append a section to bench/RESULTS.md")
    args = parser.parse_args(argv)
    plain = Tracer(transport=NoopTransport(), caller="bench")
    inproc = Tracer(transport=NoopTransport(), caller="bench", http_server=HTTPServerConfig(addr="127.0.0.1:0"))
    cases = tokentrace_cases(plain) | tokentrace_cases(inproc, "_inproc") | aggregate_case() | otel_cases()
    for name, case in cases.items():
        _DOCS[name] = " ".join((case.__doc__ or "").split())
    results, cpu = measure(cases, args.spans, args.rounds)
    inproc.close()
    print(report(results, cpu, args.spans, args.rounds, markdown=False))
    if args.append_results:
        command = " ".join(["`.venv/bin/python bench/sdk_overhead.py", *(argv or sys.argv[1:])]) + "`"
        section = report(results, cpu, args.spans, args.rounds, markdown=True)
        with open(RESULTS, "a", encoding="utf-8") as out:
            out.write(
                f"\n## SDK overhead per span vs OpenTelemetry (bench/sdk_overhead.py)\n\n{command}\n\n{section}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
