"""The view in Redis: its key layout, the idempotent writes (Lua scripts) and the change feed, the trace index.

Layout (``{p}`` is the namespace prefix, ``tt:`` by default):

* ``{p}e:<partition>:<bucket start | meta>`` — hash ``o`` (the highest source offset the entry has
  counted) and ``d`` (the entry, encoded by ``view.schema``). Written only through
  ``WRITE_ENTRY``: a compare-and-set that keeps the entry with the highest offset, so a replay, a
  rebalance or a re-materialization can never move the view back or count anything twice.
* ``{p}seq`` and ``{p}changes`` — every accepted write takes the next sequence number and records
  ``<partition>:<start>`` in the sorted set with that score, atomically (one script). Readers keep the
  highest score they have seen and fetch only what changed since.
* ``{p}epoch`` — a random id set (``NX``) by the first worker that finds it missing. A reader that sees
  it change (or vanish) starts over; a worker that sees it change re-materializes its partitions: that
  is how a flushed or restarted Redis is rebuilt from the workers' tables.
* ``{p}tl:<trace id>`` — string of the trace's JSON spans, one per line, appended as they come; ``{p}traces``
  — sorted set trace id → earliest start (ms). A replay appends a span again: readers keep the last line of
  each span id (``trace_spans``), so rewriting a span is harmless. Retention follows the listing:
  ``EXPIRE_TRACES`` deletes the traces that started before the horizon, listing entry and spans together (no
  TTL per trace: setting one cost Redis a quarter of the index's time, and expiring it as much again).
  Builds before this layout kept a trace as a hash ``{p}t:<trace id>`` (span id → JSON span); it is still
  read and expired, so their traces stay visible until retention drops them.

Entries, ``seq``, ``changes``, ``tombstones`` and ``epoch`` are those of state schema 1; a build of another
schema keeps its own under ``{p}v<schema>:`` (``Keys``), the trace index is shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from tokentrace.core import native
from tokentrace.core.span import Span
from tokentrace.view.schema import STATE_SCHEMA

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

    #: Accepted spans for the trace index: a ``(span, start ms)`` pair, or a compiled batch of them.
    IndexItem = tuple[Span, int] | WireBatch

__all__ = [
    "COLLECT_TOMBSTONES",
    "DEFAULT_PREFIX",
    "EXPIRE_TRACES",
    "INDEX_SPANS_PER_TRACE",
    "INDEX_TRACES_PER_CALL",
    "WRITE_ENTRY",
    "Keys",
    "count_spans",
    "decode_span",
    "encode_span",
    "trace_index_commands",
    "trace_spans",
]

DEFAULT_PREFIX = "tt:"

#: KEYS: entry, seq, changes, tombstones. ARGV: offset, data (empty: delete), member. Returns 1 if written.
#: A deletion leaves a tombstone (the entry's offset without data) and notes when, for ``COLLECT_TOMBSTONES``.
WRITE_ENTRY = """
local current = redis.call('HGET', KEYS[1], 'o')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'o', ARGV[1])
  redis.call('ZADD', KEYS[4], redis.call('TIME')[1], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'o', ARGV[1], 'd', ARGV[2])
end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, ARGV[3])
return 1
"""

#: KEYS: tombstones, changes. ARGV: entry key prefix, cutoff (Unix seconds), limit. Returns the number dropped.
#: Deleted entries are minutes folded into an hour entry or buckets below a retired horizon: once those
#: covering writes are old, every reader hides a resurrected copy anyway, so the tombstone can go.
COLLECT_TOMBSTONES = """
local dropped = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
  local key = ARGV[1] .. member
  if redis.call('HEXISTS', key, 'd') == 0 then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], member)
    dropped = dropped + 1
  end
  redis.call('ZREM', KEYS[1], member)
end
return dropped
"""

#: ``trace_index_commands`` puts at most this many ``APPEND`` commands in one pipeline (one ``ZADD`` each) and
#: at most this many spans in one ``APPEND`` (a longer trace takes several), so no command grows unbounded.
INDEX_TRACES_PER_CALL = 2000
INDEX_SPANS_PER_TRACE = 2000

#: KEYS: the trace listing. ARGV: trace prefix, horizon (ms), limit (at most ~4,000: Lua's ``unpack`` of two
#: keys per trace), the legacy trace prefix. Deletes up to ``limit`` traces that started before the horizon
#: (their JSON lines, an earlier build's hash, the listing entry); returns how many (call again while it
#: returns ``limit``).
EXPIRE_TRACES = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
if #ids == 0 then return 0 end
local keys = {}
for i, id in ipairs(ids) do
  keys[2 * i - 1] = ARGV[1] .. id
  keys[2 * i] = ARGV[4] .. id
end
redis.call('DEL', unpack(keys))
redis.call('ZREM', KEYS[1], unpack(ids))
return #ids
"""

_span_encoder = msgspec.json.Encoder()
_span_decoder = msgspec.json.Decoder(Span)


def encode_span(span: Span) -> bytes:
    return _span_encoder.encode(span)


def decode_span(data: bytes) -> Span:
    return _span_decoder.decode(data)


def count_spans(items: Iterable[IndexItem]) -> int:
    """The number of spans in trace index items."""
    return sum(1 if isinstance(item, tuple) else len(item) for item in items)


def _command(out: bytearray, *args: bytes) -> None:
    """Append one command in the Redis protocol (RESP): an array of bulk strings."""
    out += b"*%d\r\n" % len(args)
    for arg in args:
        out += b"$%d\r\n" % len(arg)
        out += arg
        out += b"\r\n"


def trace_index_commands(
    spans: Sequence[IndexItem],
    trace_prefix: str,
    listing: str,
    per_call: int = INDEX_TRACES_PER_CALL,
    per_trace: int = INDEX_SPANS_PER_TRACE,
) -> list[tuple[bytes, int]]:
    """The commands indexing ``(span, start ms)`` pairs (or compiled batches of them, ``native.decode_batch``)
    for ``/traces``, RESP-encoded: pipelines of ``(commands, number of replies)``, every reply an integer.

    First, per trace in order of first appearance, ``APPEND <trace_prefix><trace id>`` of its spans as JSON
    lines (at most ``per_trace`` spans per command: a longer trace takes several), at most ``per_call`` of
    them per pipeline. Then the listing: ``ZADD <listing> LT`` of every trace's earliest start, in order of
    start (then id), at most ``per_call`` traces per command and one command per pipeline. Sent in this order,
    a listed trace always has its spans; and Redis inserts members arriving in order of their score next to
    each other in its sorted set, for half of what members in arrival order cost it (bench/RESULTS.md).
    Plain commands rather than a script: Redis spent ~60 % of the index's time unpacking a script's
    arguments; appending to a string rather than setting hash fields halves what Redis spends per trace.
    """
    if not spans:
        return []
    pairs = [item for item in spans if isinstance(item, tuple)]
    lines = _span_encoder.encode_lines([span for span, _ in pairs])
    if native.trace_index_commands is not None:
        commands = native.trace_index_commands(
            spans, lines, trace_prefix.encode(), listing.encode(), per_call, per_trace
        )
        if commands is not None:
            return commands
    pair_lines = iter(lines.split(b"\n")[:-1])  # each line ends in \n
    records: list[tuple[str, int, bytes]] = []
    for item in spans:
        if isinstance(item, tuple):
            span, at = item
            records.append((span.trace_id, at, next(pair_lines)))
            continue
        for line, at in zip(item.lines().split(b"\n")[:-1], item.starts(), strict=True):
            records.append((_span_decoder.decode(line).trace_id, at, line))
    by_trace: dict[str, list[bytes]] = {}
    starts: dict[str, int] = {}
    for trace_id, at, line in records:
        members = by_trace.get(trace_id)
        if members is None:
            members = by_trace[trace_id] = []
            starts[trace_id] = at
        elif at < starts[trace_id]:
            starts[trace_id] = at
        members.append(line)
    items = [
        (trace_id, members[i : i + per_trace])
        for trace_id, members in by_trace.items()
        for i in range(0, len(members), per_trace)
    ]
    prefix, key = trace_prefix.encode(), listing.encode()
    pipelines = []
    for i in range(0, len(items), per_call):
        call = items[i : i + per_call]
        out = bytearray()
        for trace_id, members in call:
            _command(out, b"APPEND", prefix + trace_id.encode(), b"".join(line + b"\n" for line in members))
        pipelines.append((bytes(out), len(call)))
    listed = sorted((start, trace_id) for trace_id, start in starts.items())
    for i in range(0, len(listed), per_call):
        out = bytearray()
        scored: list[bytes] = []
        for start, trace_id in listed[i : i + per_call]:
            scored += (str(start).encode(), trace_id.encode())
        _command(out, b"ZADD", key, b"LT", *scored)
        pipelines.append((bytes(out), 1))
    return pipelines


def trace_spans(lines: bytes | None, legacy: Iterable[bytes] = ()) -> list[Span]:
    """A trace's spans from its JSON lines (and the hash values an earlier build wrote), each span once: the
    last line of a span id wins, as a hash field would (a replay appends a span again)."""
    by_id: dict[str, Span] = {}
    for data in (*legacy, *(lines.split(b"\n") if lines else ())):
        if data:
            span = decode_span(data)
            by_id[span.span_id] = span
    return list(by_id.values())


class Keys:
    """Key names under one prefix, the entries' under their state schema (``view.schema.STATE_SCHEMA``).

    Schema 1's keys are the prefix's own (``{p}e:...``, ``{p}seq``, ...); any other schema's entry keys, change
    feed and epoch sit under ``{p}v<schema>:``, so builds of two schemas never read each other's entries. The
    trace index holds JSON spans, not entries: every schema shares it.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, schema: int = STATE_SCHEMA) -> None:
        self.prefix = prefix
        self.schema = schema
        view = prefix if schema == 1 else f"{prefix}v{schema}:"
        self.seq = f"{view}seq"
        self.changes = f"{view}changes"
        self.epoch = f"{view}epoch"
        self.tombstones = f"{view}tombstones"
        self.entry_prefix = f"{view}e:"
        self.traces = f"{prefix}traces"
        self.trace_prefix = f"{prefix}tl:"
        #: Where builds before the JSON-lines index kept a trace (a hash by span id): read and expired still.
        self.legacy_trace_prefix = f"{prefix}t:"

    def entry(self, member: str) -> str:
        """The entry of ``member`` (``"<partition>:<start>"`` or ``"<partition>:meta"``)."""
        return f"{self.entry_prefix}{member}"

    def trace(self, trace_id: str) -> str:
        return f"{self.trace_prefix}{trace_id}"

    def legacy_trace(self, trace_id: str) -> str:
        return f"{self.legacy_trace_prefix}{trace_id}"
