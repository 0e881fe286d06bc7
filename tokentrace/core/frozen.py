"""Settled buckets and memoised projections kept as their encoded bytes ("frozen"), not as live objects.

A bucket nobody writes any more costs as much memory as its msgpack encoding (the snapshot's bytes for it),
some 15x less than its ``Aggregate`` objects with their dicts of Python ints. A write thaws it (decodes it
whole, in place); ``Timeline.compact`` freezes it again once no write has landed in it for a whole maintenance
interval. A query that needs a frozen bucket's projection decodes only the part the projection reads (the
series, or the one attribute it groups or filters by) into a throwaway ``BucketState`` and calls its own
``project``, so every answer is the reference code's answer on the same data.

The frozen form is exactly the encoded ``BucketState`` (``msgspec.Raw``): snapshots hold buckets in that
form, so a snapshot loads as one read of the file with no per-object decoding, and old snapshots load as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec

from tokentrace.core import native
from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import (
    _KERNEL as _BUCKET_KERNEL,
)
from tokentrace.core.buckets import (
    BUILTIN_DIMENSIONS,
    OVERFLOW,
    OVERFLOW_SERIES,
    BucketState,
    Caps,
    Projection,
    _attribute_text,
    attribute_dimension,
    series_key,
)
from tokentrace.core.span import EVAL_SCORE, Span

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = [
    "EMPTY",
    "Backlog",
    "add_many",
    "attribute_keys",
    "decoded_projections",
    "freeze",
    "freeze_for",
    "freeze_projection",
    "overflowed_series",
    "project",
    "thaw",
    "thaw_projection",
]

_encode = msgspec.msgpack.Encoder().encode
_untrack = native.untrack_state
_bucket = msgspec.msgpack.Decoder(BucketState).decode
_projection = msgspec.msgpack.Decoder(dict[str, Aggregate]).decode
_values = msgspec.msgpack.Decoder(dict[str, dict[str, Aggregate]]).decode


class _Series(msgspec.Struct):
    """A bucket's series alone (its other fields are skipped undecoded)."""

    series: dict[str, Aggregate] = {}


class _Attributes(msgspec.Struct):
    """A bucket's attribute keys, each key's values left encoded."""

    attributes: dict[str, msgspec.Raw] = {}


class _Shell(msgspec.Struct):
    """A bucket with each aggregate left encoded: the dicts' keys (and order) without their aggregates."""

    series: dict[str, msgspec.Raw] = {}
    attributes: dict[str, dict[str, dict[str, msgspec.Raw]]] = {}
    overflowed: int = 0
    overflowed_series: int = 0


class _Overflowed(msgspec.Struct):
    """A bucket's count of spans beyond its series cap alone."""

    overflowed_series: int = 0


_series = msgspec.msgpack.Decoder(_Series).decode
_overflowed = msgspec.msgpack.Decoder(_Overflowed).decode
_shell = msgspec.msgpack.Decoder(_Shell).decode
_aggregate = msgspec.msgpack.Decoder(Aggregate).decode
_attributes = msgspec.msgpack.Decoder(_Attributes).decode
#: ``decoded_projections``.
_decoded = [0]
#: An empty bucket, frozen: what a settled bucket starts as when a back-fill makes it.
EMPTY = msgspec.Raw(_encode(BucketState()))


def freeze(state: BucketState) -> msgspec.Raw:
    """``state`` as its encoded bytes (what a snapshot holds for it)."""
    return msgspec.Raw(_encode(state))


def freeze_for(state: BucketState, groupby: str | None, where: Mapping[str, str]) -> msgspec.Raw:
    """The part of a live ``state`` that ``project(..., groupby, where)`` reads, frozen: a copy of it as it is now,
    which any thread may then project while ``state`` goes on changing. Encoding 10k series takes ~2 ms, projecting
    them ~40-70 ms."""
    names = _names(groupby, where)
    if not names:
        return freeze(BucketState(series=state.series))
    attributes = state.attributes
    return freeze(BucketState(attributes={name: attributes[name] for name in sorted(names) if name in attributes}))


def _names(groupby: str | None, where: Mapping[str, str]) -> set[str]:
    """The attribute keys a projection reads (none: it reads the series)."""
    names = {k for k in where if k not in BUILTIN_DIMENSIONS}
    if groupby and (name := attribute_dimension(groupby)) is not None:
        names.add(name)
    return names


def overflowed_series(raw: msgspec.Raw) -> int:
    """``thaw(raw).overflowed_series``, decoding nothing else."""
    return _overflowed(raw).overflowed_series


def thaw(raw: msgspec.Raw) -> BucketState:
    """The live bucket back, whole (its aggregates' count lists untracked by the cycle collector, as new
    aggregates' are: tokentrace/core/aggregate.py)."""
    state = _bucket(raw)
    if _untrack is not None:
        _untrack(state)
    return state


def add_many(raw: msgspec.Raw, spans: Sequence[Span], caps: Caps) -> msgspec.Raw:
    """``freeze(thaw(raw).add_many(spans, caps))``, byte for byte, decoding only the aggregates the spans reach.

    The bucket's dicts are decoded with every aggregate left as its bytes; those a span may update (its series,
    and the overflow series if the bucket lacks its series; per grouped attribute, its value's and ``OVERFLOW``'s
    group for its series) are decoded; then the reference ``BucketState.add_many`` runs on it, which only looks
    up, counts and adds keys (caps and dict order as in the live bucket), and untouched aggregates encode back as
    the bytes they were.
    """
    shell = _shell(raw)
    series: dict[str, Any] = shell.series
    attributes: dict[str, dict[str, dict[str, Any]]] = shell.attributes
    for span in spans:
        own = series_key(span)
        # A span of a series the bucket lacks may count in the overflow series instead (the series cap).
        for key in (own,) if own in series else (own, OVERFLOW_SERIES):
            found = series.get(key)
            if type(found) is msgspec.Raw:
                series[key] = _aggregate(found)
            for name, raw_value in span.attributes.items():
                values = attributes.get(name)
                if values is None or name == EVAL_SCORE:
                    continue
                value = raw_value if type(raw_value) is str else _attribute_text(raw_value)
                for slot in (value, OVERFLOW) if value is not None else ():
                    by_series = values.get(slot)
                    if by_series is not None and type(found := by_series.get(key)) is msgspec.Raw:
                        by_series[key] = _aggregate(found)
    state = BucketState(
        series=series,
        attributes=cast(Any, attributes),
        overflowed=shell.overflowed,
        overflowed_series=shell.overflowed_series,
    )
    state.add_many(spans, caps)
    return freeze(state)


class Backlog:
    """Spans of compiled batches queued for frozen buckets (a back-fill), each bucket's counted into its bytes in
    one pass (native/src/frozen.rs): no Python object per aggregate or per span, and the queued spans kept as
    compact rows, side by side for the pass, not as their batches. The compiled twin of queueing ``Span`` objects
    and ``add_many`` (``add_many`` here), which the tests hold it to."""

    def __init__(self, caps: Caps, versions: dict[tuple[int, int], int], hour_ms: int, day_ms: int) -> None:
        """``versions``: change counts by key that queueing bumps for each bucket's spans, as the timeline's
        writes do: the bucket's ``(kind, start)``, its hour's ``(hour_ms, hour)`` and its day's ``(day_ms, day)``."""
        if _BUCKET_KERNEL is None or native.Backlog is None:
            raise RuntimeError("compiled span batches need the compiled bucket kernel")
        self._rows = native.Backlog(_BUCKET_KERNEL, versions, hour_ms, day_ms)
        self._caps = (caps.max_attribute_keys, caps.max_attribute_values, caps.max_series)

    def add(self, batch: WireBatch, plan: list[tuple[int, int, list[int]]]) -> int:
        """Queue the spans of ``batch`` for buckets: ``plan`` lists ``(kind, start, minutes)`` (the bucket's key
        and the batch's minutes counting in it), queued minute by minute, as ``Timeline.add_many`` counts them.
        Returns how many were queued."""
        return self._rows.add(batch, plan)

    def add_whole(self, batch: WireBatch, kind: int, size: int, hours: list[int]) -> int:
        """``add`` of all the spans of ``batch`` in each of ``hours`` (spans of ``size`` ms) for the bucket
        ``(kind, hour)``, the hour's minutes in order of first appearance."""
        return self._rows.add_whole(batch, kind, size, hours)

    def add_settled(
        self,
        batch: WireBatch,
        kind: int,
        size: int,
        hot_from: int,
        fine: dict[int, Any],
        coarse: dict[int, Any],
    ) -> tuple[int, list[tuple[int, list[int], list[int], list[int], int]]]:
        """``batch.split_settled(size, hot_from, fine, coarse, msgspec.Raw)`` then ``add_whole`` of its settled
        groups, in one compiled call: how many spans were queued, and the other groups."""
        return self._rows.add_settled(batch, kind, size, hot_from, fine, coarse, msgspec.Raw)

    def __len__(self) -> int:
        """Spans queued, all buckets'."""
        return len(self._rows)

    def memory(self) -> int:
        """Bytes the queued spans take, as allocated (rows of 72 bytes, 8 more for each grouped attribute, and
        the texts they name, each once while a row uses it)."""
        return self._rows.memory()

    def fullest(self, holding: int | None = None) -> list[tuple[int, int, int]]:
        """``(spans, kind, start)`` of each bucket with spans queued, the most first; with ``holding``, only the
        first buckets holding that many spans between them."""
        return self._rows.fullest(holding)

    def queued(self, key: tuple[int, int]) -> int:
        return self._rows.queued(*key)

    def count_into(self, key: tuple[int, int], raw: msgspec.Raw) -> msgspec.Raw:
        """The frozen bucket ``raw`` with what waits for ``key`` counted (as ``BucketState.add`` of each span in
        order); a bucket in a layout the compiled code does not read (an older build's) is rewritten in this
        build's first."""
        counted = self._rows.count_into(*key, raw, *self._caps)
        if counted is None:
            counted = self._rows.count_into(*key, freeze(thaw(raw)), *self._caps)
        if counted is None:  # an int beyond 64 bits: msgspec could not write the bucket either
            raise OverflowError(f"bucket {key}: a sum no longer fits a 64-bit int")
        return msgspec.Raw(counted)

    def discard(self, key: tuple[int, int]) -> int:
        """Drop what waits for ``key``; returns how many spans."""
        return self._rows.discard(*key)

    def clear(self) -> None:
        self._rows.clear()


def project(raw: msgspec.Raw, groupby: str | None, where: Mapping[str, str]) -> Projection:
    """``thaw(raw).project(groupby, where)``, decoding only what that projection reads (counted:
    ``decoded_projections``)."""
    _decoded[0] += 1
    names = _names(groupby, where)
    if not names:
        return BucketState(series=_series(raw).series).project(groupby, where)
    encoded = _attributes(raw).attributes
    attributes = {name: _values(encoded[name]) for name in sorted(names) if name in encoded}
    return BucketState(attributes=attributes).project(groupby, where)


def decoded_projections() -> int:
    """How many frozen buckets ``project`` has decoded in this process (what memos spare: a query answered from
    memos decodes none but its window's edges). Counted without a lock, so calls from several threads at once may
    count one less."""
    return _decoded[0]


def attribute_keys(raw: msgspec.Raw) -> list[str]:
    """``list(thaw(raw).attributes)``, without decoding their aggregates."""
    return list(_attributes(raw).attributes)


def freeze_projection(projection: Projection) -> msgspec.Raw:
    """A memoised projection as bytes (a day or hour block's memo)."""
    return msgspec.Raw(_encode(projection))


def thaw_projection(raw: msgspec.Raw) -> Projection:
    """A new projection, sharing nothing, equal to the one frozen."""
    return _projection(raw)
