"""The view's schema: the entries a worker keeps per (source partition, bucket) and their keys, as encoded in
the worker's changelog and in the Redis view.

* The state of source partition ``p`` is a set of entries keyed ``b"p:<bucket start ms>"`` (a ``BucketEntry``:
  the core's ``BucketState`` plus the highest source offset applied to it), hour entries ``b"p:h<hour start>"``
  (compacted minutes), one ``b"p:meta"`` entry (``PartitionMeta``: the partition's exact counters, with its own
  offset), one ``b"p:retired"`` entry (``RetiredEntry``: everything below its ``horizon``) and key blocks
  ``b"p:k<n>"`` (``KeyBlock``: idempotency ids, worker state only, never materialized in Redis).
* Every entry carries a version (its offset, a retired entry its horizon) that only moves forward: the view's
  compare-and-set (``view.keys.WRITE_ENTRY``) and the worker's changelog restore keep the highest.

What the entries mean and how a worker changes them is the worker's (``tokentrace.processors.state``); how they
sit in Redis is ``view.keys``; this module is the encoding both sides read.
"""

from __future__ import annotations

import msgspec

from tokentrace.core import native
from tokentrace.core.buckets import BucketState

__all__ = [
    "HOUR_TAG",
    "KEY_TAG",
    "META",
    "RETIRED",
    "STATE_SCHEMA",
    "TOMBSTONE_VERSION",
    "BucketEntry",
    "Entry",
    "KeyBlock",
    "PartitionMeta",
    "RetiredEntry",
    "bucket_key",
    "decode_entry",
    "encode_entry",
    "hour_key",
    "is_hour_key",
    "is_key_block",
    "key_block_key",
    "meta_key",
    "parse_key",
    "retired_key",
]

#: Version of the state's layout: the entries below and the core aggregates they hold, as they are encoded in
#: the changelog and the Redis view. Bump it with any incompatible change to that encoding: a worker of a new
#: schema keeps its table in a new changelog topic (``processors.state.table_name``) and its view under new
#: Redis keys (``view.keys.Keys``), so it starts with no state and rebuilds it from the span topic (seeking back
#: to each partition's first offset, see ``processors.worker``) instead of misreading the old entries; API
#: replicas of each build read their own schema's view meanwhile.
STATE_SCHEMA = 1
META = "meta"
RETIRED = "retired"
HOUR_TAG = "h"
KEY_TAG = "k"
#: Version under which a retired bucket's deletion is materialized: nothing can overwrite it.
TOMBSTONE_VERSION = 2**62


class BucketEntry(msgspec.Struct, array_like=True, tag="b"):
    """One bucket of one source partition, and the highest source offset counted in it."""

    offset: int
    state: BucketState


class PartitionMeta(msgspec.Struct, array_like=True, tag="m"):
    """Per-partition counters (exact, with their own offset): what the partition's messages held."""

    offset: int = -1
    messages: int = 0
    spans: int = 0
    poison: int = 0
    too_old: int = 0
    future: int = 0
    invalid: int = 0
    #: Messages skipped as retries (their idempotency id was applied before).
    retries: int = 0
    #: The newest timestamp (ms) of a message with an idempotency id: the clock ids are forgotten by.
    key_clock: int = 0


class RetiredEntry(msgspec.Struct, array_like=True, tag="r"):
    """Everything a partition counted in buckets that started before ``horizon`` (retired buckets)."""

    horizon: int
    state: BucketState

    @property
    def offset(self) -> int:
        """The entry's version for the Redis compare-and-set: the horizon only moves forward."""
        return self.horizon


class KeyBlock(msgspec.Struct, array_like=True, tag="k"):
    """The idempotency ids applied by the messages of one range of source offsets of a partition
    (``processors.idempotency``: ``KEY_BLOCK`` offsets per block)."""

    #: The highest source offset recorded (the entry's version).
    offset: int
    #: Digest of an id -> ``timestamp_ms * KEY_BLOCK + offset % KEY_BLOCK`` of the message that applied it.
    keys: dict[bytes, int]


Entry = BucketEntry | PartitionMeta | RetiredEntry | KeyBlock
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Entry)
_untrack = native.untrack_state


def encode_entry(entry: Entry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(data: bytes) -> Entry:
    """An entry back; a bucket's aggregates with their count lists untracked by the cycle collector (as
    tokentrace/core/aggregate.py makes new ones): a worker keeps these for as long as it owns the partition."""
    entry: Entry = _decoder.decode(data)
    if _untrack is not None and isinstance(entry, (BucketEntry, RetiredEntry)):
        _untrack(entry.state)
    return entry


def bucket_key(partition: int, start_ms: int) -> bytes:
    return f"{partition}:{start_ms}".encode()


def meta_key(partition: int) -> bytes:
    return f"{partition}:{META}".encode()


def retired_key(partition: int) -> bytes:
    return f"{partition}:{RETIRED}".encode()


def hour_key(partition: int, hour_ms: int) -> bytes:
    return f"{partition}:{HOUR_TAG}{hour_ms}".encode()


def key_block_key(partition: int, seq: int) -> bytes:
    return f"{partition}:{KEY_TAG}{seq}".encode()


def parse_key(key: bytes | str) -> tuple[int, int | None]:
    """``(partition, bucket start)``; the start is None for the partition's meta, retired and key block entries
    (an hour entry's start is its hour; ``is_hour_key`` tells them apart)."""
    text = key.decode() if isinstance(key, bytes) else key
    partition, _, rest = text.partition(":")
    if rest in (META, RETIRED) or rest.startswith(KEY_TAG):
        return int(partition), None
    return int(partition), int(rest[1:] if rest.startswith(HOUR_TAG) else rest)


def is_hour_key(key: bytes | str) -> bool:
    text = key.decode() if isinstance(key, bytes) else key
    return text.partition(":")[2].startswith(HOUR_TAG)


def is_key_block(key: bytes | str) -> bool:
    """Whether ``key`` is a block of idempotency ids (worker state only: never materialized in the view)."""
    text = key.decode() if isinstance(key, bytes) else key
    return text.partition(":")[2].startswith(KEY_TAG)
