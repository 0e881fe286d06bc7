"""Test harness for the distributed pipeline: a brute-force oracle, producing, waiting for the view."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from benchkit.spans import make_spans
from benchkit.topics import read_topic
from benchkit.workers import Workers

from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.core.aggregate import NANO
from tokentrace.core.codec import decode_wire, encode_wire
from tokentrace.core.span import Span
from tokentrace.core.timefmt import now_ms
from tokentrace.core.topic import split_messages

# The span generator, worker processes and topic reader are the benchmarks' (bench/benchkit, on pytest's path).
__all__ = [
    "Oracle",
    "Workers",
    "aggregate_totals",
    "assert_view_is_recount",
    "make_spans",
    "produce",
    "produce_raw",
    "read_topic",
    "recount_topic",
    "wait_counted",
    "wait_view_total",
]


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
