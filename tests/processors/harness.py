"""Test harness for the distributed pipeline: worker processes, span generators, a brute-force oracle."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tests.infra.procs import ServerProcess
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.aggregate import NANO
from tokentrace.core.codec import decode_wire, encode_wire
from tokentrace.core.span import Span, new_id
from tokentrace.core.timefmt import format_ms, now_ms
from tokentrace.core.topic import split_messages

MODELS = (("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-5-sonnet", "anthropic"))
CALLERS = ("summarizer", "search", "chat")
WORKFLOWS = ("ingest", "answer", "review", "triage")


class Workers:
    """``tokentrace worker`` processes of one deployment (same app id, topic and Redis)."""

    def __init__(
        self,
        bootstrap: str,
        redis_url: str,
        topic: str,
        log_dir: Path,
        *,
        app_id: str | None = None,
        session_timeout: float = 6.0,
        extra_args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        """``cwd``: where the workers run. ``python -m`` puts it first on ``sys.path``, ahead of PYTHONPATH, so a
        worker meant to import another tree's ``tokentrace`` (a benchmark's variant) must run where that one is
        found, not in a checkout with its own ``tokentrace/``."""
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.topic = topic
        self.log_dir = log_dir
        self.app_id = app_id or f"tt-{topic}"
        self.session_timeout = session_timeout
        self.extra_args = list(extra_args)
        self.cwd = cwd
        self.procs: list[ServerProcess] = []
        self.started = 0

    def start(self) -> ServerProcess:
        self.started += 1
        argv = [sys.executable, "-m", "tokentrace", "worker"]
        argv += ["--bootstrap-servers", self.bootstrap, "--redis-url", self.redis_url, "--topic", self.topic]
        argv += ["--app-id", self.app_id, "--session-timeout", str(self.session_timeout), *self.extra_args]
        proc = ServerProcess(f"worker {self.started}", argv, self.log_dir / f"worker-{self.started}.log", cwd=self.cwd)
        proc.start()
        self.procs.append(proc)
        return proc

    def alive(self) -> list[ServerProcess]:
        return [p for p in self.procs if p.running]

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            if not proc.wait(15):
                proc.kill()

    def logs(self) -> str:
        return "".join(f"\n--- {p.log_path}:\n{p.log_tail(30)}" for p in self.procs)


def make_spans(count: int, rng: random.Random, now: int | None = None, spread_ms: int = 50 * 60_000) -> list[Span]:
    """Spans of 1-3 span traces over the last ``spread_ms``, with costs, scores and attributes."""
    now = now or now_ms()
    spans: list[Span] = []
    while len(spans) < count:
        trace_id = new_id()
        root = None
        started = now - rng.randrange(0, spread_ms)
        for _ in range(min(rng.randrange(1, 4), count - len(spans))):
            model, provider = rng.choice(MODELS)
            status = rng.choices(("ok", "error", "timeout"), (90, 7, 3))[0]
            attributes: dict[str, Any] = {"workflow": rng.choice(WORKFLOWS)}
            if rng.random() < 0.6:
                attributes["eval.score"] = round(rng.random(), 3)
            span = Span(
                trace_id=trace_id,
                parent_span_id=root,
                name=f"step-{len(spans) % 5}",
                model=model,
                provider=provider,
                prompt_tokens=rng.randrange(1, 4000),
                comp_tokens=rng.randrange(0, 800),
                cost_usd=round(rng.random() / 100, 7),
                latency_ms=rng.randrange(20, 9000),
                status=status,
                caller=rng.choice(CALLERS),
                started_at=format_ms(started),
                attributes=attributes,
            )
            root = root or span.span_id
            spans.append(span)
    return spans


@dataclass
class Oracle:
    """Brute-force totals of a list of spans (no sketches, no buckets)."""

    spans: list[Span] = field(default_factory=list)

    def add(self, spans: Iterable[Span]) -> None:
        self.spans.extend(spans)

    def totals(self, spans: Sequence[Span] | None = None) -> dict[str, int]:
        spans = self.spans if spans is None else spans
        return {
            "count": len(spans),
            "errors": sum(s.status == "error" for s in spans),
            "timeouts": sum(s.status == "timeout" for s in spans),
            "cost_nanos": sum(int((s.cost_usd or 0) * NANO + 0.5) for s in spans),
            "prompt_tokens": sum(int(s.prompt_tokens or 0) for s in spans),
            "comp_tokens": sum(int(s.comp_tokens or 0) for s in spans),
            "total_tokens": sum(int(s.total_tokens or 0) for s in spans),
            "latency_sum_us": sum(round((s.latency_ms or 0) * 1000) for s in spans),
            "score_count": sum(s.score is not None for s in spans),
        }

    def by(self, dimension: str) -> dict[str, list[Span]]:
        groups: dict[str, list[Span]] = {}
        for span in self.spans:
            value = getattr(span, dimension) if dimension in ("model", "provider", "caller") else None
            if value is None:
                value = str(span.attributes.get(dimension))
            groups.setdefault(value, []).append(span)
        return groups

    def quantile(self, q: float, spans: Sequence[Span] | None = None) -> float:
        values = sorted(float(s.latency_ms or 0) for s in (self.spans if spans is None else spans))
        return values[int(q * (len(values) - 1))]

    def traces(self) -> Counter[str]:
        return Counter(s.trace_id for s in self.spans)


def aggregate_totals(aggregate: Any) -> dict[str, int]:
    """The same fields from a core ``Aggregate``."""
    return {
        "count": aggregate.count,
        "errors": aggregate.errors,
        "timeouts": aggregate.timeouts,
        "cost_nanos": aggregate.cost_nanos,
        "prompt_tokens": aggregate.prompt_tokens,
        "comp_tokens": aggregate.comp_tokens,
        "total_tokens": aggregate.total_tokens,
        "latency_sum_us": aggregate.latency_sum_us,
        "score_count": aggregate.score_count,
    }


async def produce(
    bootstrap: str,
    topic: str,
    spans: Sequence[Span],
    batch: int = 100,
    rate: float | None = None,
    acked: list[Span] | None = None,
) -> None:
    """Publish spans as batches of ``batch`` spans (each on its first trace's partition, as every producer
    does: ``core.topic``), acks=all; ``rate`` spans/s.

    With ``acked``, a failed send is tolerated and the spans the broker acknowledged are appended to it.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, request_timeout_ms=10_000
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        began = time.monotonic()
        for i in range(0, len(spans), batch * 10):
            chunk = list(spans[i : i + batch * 10])
            messages = [
                m
                for j in range(0, len(chunk), batch)
                for m in split_messages(chunk[j : j + batch], partitions, batch, 900_000)[0]
            ]
            futures = [await producer.send(topic, m.value, key=m.key, partition=m.partition) for m in messages]
            results = await asyncio.gather(*futures, return_exceptions=acked is not None)
            if acked is not None:
                for message, result in zip(messages, results, strict=True):
                    if not isinstance(result, BaseException):
                        acked.extend(decode_wire(message.value))
            if rate:
                ahead = (i + len(chunk)) / rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await producer.stop()


async def produce_raw(bootstrap: str, topic: str, values: Sequence[tuple[int, bytes]]) -> None:
    """Publish raw message values to given partitions (for poison messages)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for partition, value in values:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, partitions: int = 4) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of the topic's partitions, from each log's start to its end as it was when called."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        remaining = {tp for tp in parts if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    yield record
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        with contextlib.suppress(asyncio.CancelledError):  # aiokafka 0.14 without a group id
            await consumer.stop()


async def recount_topic(bootstrap: str, topic: str, partitions: int = 4) -> tuple[list[Span], int]:
    """Every valid span on the topic and the number of poison messages (read from the beginning)."""
    spans: list[Span] = []
    poison = 0
    async for record in read_topic(bootstrap, topic, partitions):
        try:
            spans.extend(decode_wire(record.value or b""))
        except Exception:
            poison += 1
    return spans, poison


async def wait_counted(
    store: RedisStore, expected: int, within_s: float, workers: Workers | None = None, *, at_least: bool = False
) -> None:
    """Wait until the view's exact span counter reaches ``expected`` (fail on more: a double count)."""
    deadline = time.monotonic() + within_s
    counted = -1
    while time.monotonic() < deadline:
        health = await store.health()
        counted = health.span_count
        if counted >= expected:
            break
        await asyncio.sleep(0.25)
    metas = {p: (m.offset, m.spans, m.messages) for p, m in sorted(store.view.meta.items())}
    assert counted >= expected if at_least else counted == expected, (
        f"view counted {counted} spans, expected {expected}; metas {metas}"
        + (workers.logs() if workers and counted != expected else "")
    )


async def wait_view_total(store: RedisStore, start: int, end: int, expected: int, within_s: float = 20.0) -> Any:
    """Wait until the aggregate over [start, end) counts ``expected`` spans; returns the total Aggregate."""
    from tokentrace.core.timeline import total

    deadline = time.monotonic() + within_s
    while True:
        aggregate = total(await store.query(start, end, None, {}))
        if aggregate.count == expected or time.monotonic() > deadline:
            return aggregate
        await asyncio.sleep(0.25)


async def assert_view_is_recount(bootstrap: str, topic: str, store: RedisStore) -> list[str]:
    """Assert the view's totals (last two hours) equal a brute-force count of the topic; the span ids."""
    from tokentrace.core.timeline import HOUR_MS

    spans, poison = await recount_topic(bootstrap, topic)
    assert poison == 0
    now = now_ms()
    view = await wait_view_total(store, now - 2 * HOUR_MS, now + HOUR_MS, len(spans))
    assert aggregate_totals(view) == Oracle(spans).totals()
    return [s.span_id for s in spans]


def encode_batches(spans: Sequence[Span], size: int) -> list[bytes]:
    return [encode_wire(list(spans[i : i + size])) for i in range(0, len(spans), size)]
