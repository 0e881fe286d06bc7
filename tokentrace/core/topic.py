"""The span topic's messages: how a batch of spans becomes Kafka messages, the one rule every producer follows.

**A batch goes whole to one partition.** A batch (one ``POST /spans`` or other ingest request on an API replica,
one send of the SDK's ``KafkaTransport``) is published to the partition Kafka's default partitioner picks for
its first span's trace id (``murmur2(trace id) % partitions``), and that trace id is the key of each of its
messages. It is cut into messages only by size (``max_spans`` spans, ``max_bytes`` bytes), in order; each
message is one wire-format batch (``encode_wire``). Why one partition per batch: a worker pays per message, so
fanning a 100-span request out by trace over 4 partitions made ~25-span messages (bench/RESULTS.md), and a
retried request lands on the partition whose worker remembers its idempotency id. Nothing downstream needs a
trace's spans in one partition: the workers' aggregates merge partitions and the trace index joins them.

**Idempotency.** A request's ``Idempotency-Key`` travels as the ``MESSAGE_ID_HEADER`` header of each message
(``message_id``: the key, suffixed for a batch's later messages); the worker skips a message id its partition
applied before (``tokentrace.processors.idempotency``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka.partitioner import murmur2

from tokentrace.core.codec import encode_wire
from tokentrace.core.span import Span

__all__ = ["MESSAGE_ID_HEADER", "TopicMessage", "header_id", "message_id", "partition_for", "split_messages"]

#: Kafka header carrying a message's idempotency id (the request's key, suffixed for a batch's later parts).
MESSAGE_ID_HEADER = "tokentrace-idempotency-key"


@dataclass(frozen=True, slots=True)
class TopicMessage:
    """One Kafka message to produce: a wire-format batch of ``count`` spans for one partition."""

    partition: int
    key: bytes
    value: bytes
    count: int


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(trace_id: str) -> int:
    return int(murmur2(trace_id.encode())) & 0x7FFFFFFF  # ~7 µs in pure Python, hence the cache


def partition_for(trace_id: str, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner picks for key ``trace_id`` (``partitions`` sorted)."""
    return partitions[_key_hash(trace_id) % len(partitions)]


def split_messages(
    spans: Sequence[Span], partitions: Sequence[int], max_spans: int, max_bytes: int
) -> tuple[list[TopicMessage], list[Span]]:
    """The messages of one batch (see the module docstring), in ``spans`` order, and the spans too large to
    fit in a message on their own (left out)."""
    if not spans:
        return [], []
    key = spans[0].trace_id
    partition = partition_for(key, sorted(partitions))
    messages: list[TopicMessage] = []
    too_large: list[Span] = []
    for start in range(0, len(spans), max_spans):
        _encode_fitting(list(spans[start : start + max_spans]), partition, key.encode(), max_bytes, messages, too_large)
    return messages, too_large


def _encode_fitting(
    chunk: list[Span], partition: int, key: bytes, max_bytes: int, out: list[TopicMessage], too_large: list[Span]
) -> None:
    value = encode_wire(chunk)
    if len(value) <= max_bytes:
        out.append(TopicMessage(partition, key, value, len(chunk)))
    elif len(chunk) == 1:
        too_large.append(chunk[0])
    else:
        half = len(chunk) // 2
        _encode_fitting(chunk[:half], partition, key, max_bytes, out, too_large)
        _encode_fitting(chunk[half:], partition, key, max_bytes, out, too_large)


def message_id(key: str, part: int) -> str:
    """The id of part ``part`` of a batch sent under ``key`` (a key is printable ASCII: no tab in it)."""
    return key if part == 0 else f"{key}\t{part}"


def header_id(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    """A message's id from its Kafka headers, or None."""
    for name, value in headers or ():
        if name == MESSAGE_ID_HEADER and value:
            return value.decode("utf-8", "replace")
    return None
