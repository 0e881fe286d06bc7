"""Idempotency keys in a worker's state: which message ids a partition applied, so a retry is skipped.

The API publishes a request's ``Idempotency-Key`` as a Kafka header of its message(s) (``core.topic``:
``MESSAGE_ID_HEADER``, ``message_id``), and a retry of the same batch goes to the same partition, so the
partition's worker can tell a retry from a new batch. Pure logic, no Faust and no I/O, built for the replay
rules of ``processors.state`` — every decision is a function of the partition's messages up to it:

* A message's id is kept as a 16-byte digest with the offset and timestamp of the message that applied it,
  in the ``KeyBlock`` (``view.schema``) of its offset (``b"p:k<offset // KEY_BLOCK>"``). Replaying a message records the same
  digest in the same block again: a no-op. Only the current block changes, so a flush re-encodes at most
  ``KEY_BLOCK`` digests per partition, never the whole set.
* A message is a retry when a message *before it* (a lower offset) applied the same id and that id is still
  remembered: its block is one of the ``KeyPolicy.blocks`` newest by offset (the ids of at least the
  partition's last ``max_keys`` messages), and its timestamp is within ``window_ms`` of the partition's key
  clock (the newest message timestamp seen, kept in the partition's meta entry, so it only moves forward).
  Comparing offsets rather than membership keeps a block written ahead of the meta entry before a crash
  (the same flush, the meta entry last) from turning a replayed original into a "retry".
* ``collect`` names the blocks no later message can use (too old by offset or by time); the worker deletes
  them one flush after the meta entry that decided it is durable, and a block that survived a crash
  regardless is ignored the same way, so forgetting never changes a decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from tokentrace.view.schema import KEY_TAG, KeyBlock, key_block_key

__all__ = ["KEY_BLOCK", "KeyPolicy", "applied_before", "collect", "digest", "record"]

#: Source offsets per key block (a block holds at most this many ids: one per message).
KEY_BLOCK = 1024


@dataclass(frozen=True)
class KeyPolicy:
    """How long a partition remembers the ids it applied: ``window_ms`` of message time, and the ids of at
    least its last ``max_keys`` messages (at most ``max_keys + 2 * KEY_BLOCK`` ids)."""

    window_ms: int = 86_400_000
    max_keys: int = 200_000

    @property
    def blocks(self) -> int:
        """How many blocks, the current one included, a message looks up (covers ``max_keys`` offsets)."""
        return self.max_keys // KEY_BLOCK + 2


def digest(ident: str) -> bytes:
    return hashlib.blake2b(ident.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def applied_before(
    entries: MutableMapping[bytes, Any], partition: int, ident: bytes, offset: int, clock_ms: int, policy: KeyPolicy
) -> bool:
    """Whether a message before ``offset`` applied ``ident`` (a digest) and the partition still remembers it at
    key clock ``clock_ms``."""
    last = offset // KEY_BLOCK
    oldest_ms = clock_ms - policy.window_ms
    for seq in range(last, max(-1, last - policy.blocks), -1):
        block = entries.get(key_block_key(partition, seq))
        if not isinstance(block, KeyBlock):
            continue
        packed = block.keys.get(ident)
        if packed is None:
            continue
        at, timestamp_ms = seq * KEY_BLOCK + packed % KEY_BLOCK, packed // KEY_BLOCK
        if at < offset and timestamp_ms >= oldest_ms:
            return True
    return False


def record(entries: MutableMapping[bytes, Any], partition: int, ident: bytes, offset: int, timestamp_ms: int) -> bytes:
    """Record that the message at ``offset`` applied ``ident``; returns the key of the block it changed."""
    key = key_block_key(partition, offset // KEY_BLOCK)
    block = entries.get(key)
    if not isinstance(block, KeyBlock):
        block = entries[key] = KeyBlock(-1, {})
    block.keys[ident] = timestamp_ms * KEY_BLOCK + offset % KEY_BLOCK
    block.offset = max(block.offset, offset)
    return key


def collect(
    entries: MutableMapping[bytes, Any], partition: int, next_offset: int, clock_ms: int, policy: KeyPolicy
) -> list[bytes]:
    """Remove the partition's blocks that no message from ``next_offset`` on, at a key clock of ``clock_ms`` or
    later, can use; returns their keys (to delete from the changelog once what decided it is durable)."""
    prefix = f"{partition}:{KEY_TAG}".encode()
    first_used = next_offset // KEY_BLOCK - policy.blocks + 1
    oldest_ms = clock_ms - policy.window_ms
    removed: list[bytes] = []
    for key, block in list(entries.items()):
        if not key.startswith(prefix) or not isinstance(block, KeyBlock):
            continue
        seq = int(key[len(prefix) :])
        if seq < first_used or all(packed // KEY_BLOCK < oldest_ms for packed in block.keys.values()):
            del entries[key]
            removed.append(key)
    return removed
