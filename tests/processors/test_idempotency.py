"""Idempotency ids in the worker's state, without Kafka: a retry is skipped, also across crashes and replays."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core.codec import encode_wire
from tokentrace.core.span import Span
from tokentrace.core.timefmt import format_ms
from tokentrace.core.timeline import HOUR_MS, MINUTE_MS, TimelineSettings
from tokentrace.processors.idempotency import KEY_BLOCK, KeyPolicy, collect
from tokentrace.processors.state import Applier
from tokentrace.view.schema import (
    BucketEntry,
    Entry,
    KeyBlock,
    PartitionMeta,
    decode_entry,
    encode_entry,
    is_key_block,
    meta_key,
    parse_key,
)

NOW = 1_780_000_000_000 - 1_780_000_000_000 % MINUTE_MS


def _payload(spans: int, tokens: int = 1) -> bytes:
    fields = {"model": "gpt-4o", "prompt_tokens": tokens, "comp_tokens": 1, "started_at": format_ms(NOW)}
    return encode_wire([msgspec.convert(fields, Span) for _ in range(spans)])


def _applier(policy: KeyPolicy | None = None) -> Applier:
    return Applier(TimelineSettings(), None, 5 * MINUTE_MS, policy)


def _spans(entries: dict[bytes, Entry]) -> int:
    return sum(a.count for e in entries.values() if isinstance(e, BucketEntry) for a in e.state.series.values())


def _meta(entries: dict[bytes, Entry], partition: int = 0) -> PartitionMeta:
    meta = entries[meta_key(partition)]
    assert isinstance(meta, PartitionMeta)
    return meta


def _copy(entries: dict[bytes, Entry]) -> dict[bytes, Entry]:
    return {k: decode_entry(encode_entry(v)) for k, v in entries.items()}


def test_a_retry_counts_once_and_other_ids_count() -> None:
    entries: dict[bytes, Entry] = {}
    applier = _applier()
    stream = [("a", 3), ("b", 4), ("a", 3), (None, 5), (None, 5), ("b", 4), ("c", 1)]
    results = [applier.apply(entries, 0, offset, NOW, _payload(n), ident) for offset, (ident, n) in enumerate(stream)]
    assert [r.retry for r in results] == [False, False, True, False, False, True, False]
    assert _spans(entries) == 3 + 4 + 5 + 5 + 1
    meta = _meta(entries)
    assert (meta.messages, meta.retries, meta.spans, meta.offset) == (7, 2, 18, 6)
    assert all(parse_key(k)[1] is None for k in entries if is_key_block(k))
    # A replay of the whole partition changes nothing, and a replayed original is not taken for its retry.
    again = [applier.apply(entries, 0, offset, NOW, _payload(n), ident) for offset, (ident, n) in enumerate(stream)]
    assert [r.retry for r in again] == [False, False, True, False, False, True, False]
    assert _spans(entries) == 18 and _meta(entries).retries == 2


def test_ids_are_per_partition() -> None:
    entries: dict[bytes, Entry] = {}
    applier = _applier()
    assert not applier.apply(entries, 0, 0, NOW, _payload(1), "a").retry
    assert not applier.apply(entries, 1, 0, NOW, _payload(1), "a").retry
    assert applier.apply(entries, 1, 1, NOW, _payload(1), "a").retry


def test_ids_are_forgotten_after_the_window_of_message_time() -> None:
    entries: dict[bytes, Entry] = {}
    applier = _applier(KeyPolicy(window_ms=HOUR_MS))
    applier.apply(entries, 0, 0, NOW, _payload(1), "a")
    assert applier.apply(entries, 0, 1, NOW + HOUR_MS, _payload(1), "a").retry  # exactly the window: remembered
    assert not applier.apply(entries, 0, 2, NOW + HOUR_MS + 1, _payload(1), "a").retry
    # The clock only moves forward: a message stamped earlier does not bring a forgotten id back.
    applier.apply(entries, 0, 3, NOW + 3 * HOUR_MS, _payload(1), "b")
    assert not applier.apply(entries, 0, 4, NOW + 2 * HOUR_MS + 1, _payload(1), "a").retry
    assert _spans(entries) == 4


def test_ids_of_at_least_the_last_max_keys_messages_are_remembered() -> None:
    policy = KeyPolicy(max_keys=2 * KEY_BLOCK)
    for distance, retry in ((2 * KEY_BLOCK, True), (4 * KEY_BLOCK, False)):
        entries: dict[bytes, Entry] = {}
        applier = _applier(policy)
        start = KEY_BLOCK - 1  # the last offset of a block: the worst case for the lower bound
        applier.apply(entries, 0, start, NOW, _payload(1), "a")
        assert applier.apply(entries, 0, start + distance, NOW, _payload(1), "a").retry is retry


def _stream(draw_ids: list[int | None], sizes: list[int]) -> list[tuple[str | None, bytes]]:
    return [(None if i is None else f"key-{i}", _payload(n)) for i, n in zip(draw_ids, sizes, strict=True)]


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.one_of(st.none(), st.integers(0, 8)), min_size=1, max_size=40),
    flush=st.integers(1, 6),
    crash=st.integers(0, 100),
    seed=st.integers(0, 2**16),
)
def test_a_crash_between_flushes_neither_loses_nor_doubles(
    ids: list[int | None], flush: int, crash: int, seed: int
) -> None:
    """Entries reach the changelog flush by flush, the meta entry last: after a crash, the meta entry is that
    of some flush and every other entry that of the same flush or the next one. Replay from the meta entry's
    offset (or from earlier, as Faust may) ends where an uninterrupted run does."""
    rng = random.Random(seed)
    sizes = [rng.randrange(1, 4) for _ in ids]
    stream = _stream(ids, sizes)
    seen: set[str] = set()
    expected = 0
    for (ident, _), n in zip(stream, sizes, strict=True):  # the oracle: a batch counts when its id is new
        if ident is None or ident not in seen:
            expected += n
        if ident is not None:
            seen.add(ident)

    applier = _applier()
    entries: dict[bytes, Entry] = {}
    flushes: list[dict[bytes, Entry]] = [{}]
    for offset, (ident, payload) in enumerate(stream):
        applier.apply(entries, 0, offset, NOW, payload, ident)
        if (offset + 1) % flush == 0 or offset == len(stream) - 1:
            flushes.append(_copy(entries))
    at = crash % len(flushes)
    durable, ahead = flushes[at], flushes[min(at + 1, len(flushes) - 1)]
    recovered = dict(durable)
    for key, entry in ahead.items():  # some records of the next flush made it, never its meta entry
        if key != meta_key(0) and rng.random() < 0.5:
            recovered[key] = decode_entry(encode_entry(entry))
    meta = recovered.get(meta_key(0))
    resume = meta.offset + 1 if isinstance(meta, PartitionMeta) else 0
    for offset in range(max(0, resume - rng.randrange(0, 3)), len(stream)):
        ident, payload = stream[offset]
        applier.apply(recovered, 0, offset, NOW, payload, ident)
    assert _spans(entries) == expected
    assert _spans(recovered) == expected
    assert (
        _meta(recovered).retries
        == _meta(entries).retries
        == sum(1 for i in ids if i is not None) - len({i for i in ids if i is not None})
    )


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.integers(0, 4), min_size=1, max_size=60), gaps=st.lists(st.integers(0, 3 * KEY_BLOCK // 2)))
def test_collecting_blocks_never_changes_a_decision(ids: list[int], gaps: list[int]) -> None:
    """Blocks are deleted only once no later message can use them: the same stream decides the same with
    ``collect`` after every message as without it."""
    policy = KeyPolicy(window_ms=10 * MINUTE_MS, max_keys=KEY_BLOCK)
    plain: dict[bytes, Entry] = {}
    collected: dict[bytes, Entry] = {}
    applier = _applier(policy)
    offset, at = 0, NOW
    payload = _payload(1)
    for n, i in enumerate(ids):
        gap = gaps[n % len(gaps)] if gaps else 1
        offset += gap + 1
        at += (gap % 7) * MINUTE_MS - 2 * MINUTE_MS  # message time is not monotonic
        first = applier.apply(plain, 0, offset, at, payload, f"k{i}")
        second = applier.apply(collected, 0, offset, at, payload, f"k{i}")
        assert first.retry == second.retry
        meta = _meta(collected)
        collect(collected, 0, meta.offset + 1, meta.key_clock, policy)
    assert _spans(plain) == _spans(collected)
    blocks = [e for k, e in collected.items() if is_key_block(k)]
    assert all(isinstance(b, KeyBlock) for b in blocks)
    assert len(blocks) <= policy.blocks
