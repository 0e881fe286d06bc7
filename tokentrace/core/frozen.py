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

from collections.abc import Mapping

import msgspec

from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import BUILTIN_DIMENSIONS, BucketState, Projection, attribute_dimension

__all__ = [
    "attribute_keys",
    "freeze",
    "freeze_projection",
    "project",
    "thaw",
    "thaw_projection",
]

_encode = msgspec.msgpack.Encoder().encode
_bucket = msgspec.msgpack.Decoder(BucketState).decode
_projection = msgspec.msgpack.Decoder(dict[str, Aggregate]).decode
_values = msgspec.msgpack.Decoder(dict[str, dict[str, Aggregate]]).decode


class _Series(msgspec.Struct):
    """A bucket's series alone (its other fields are skipped undecoded)."""

    series: dict[str, Aggregate] = {}


class _Attributes(msgspec.Struct):
    """A bucket's attribute keys, each key's values left encoded."""

    attributes: dict[str, msgspec.Raw] = {}


_series = msgspec.msgpack.Decoder(_Series).decode
_attributes = msgspec.msgpack.Decoder(_Attributes).decode


def freeze(state: BucketState) -> msgspec.Raw:
    """``state`` as its encoded bytes (what a snapshot holds for it)."""
    return msgspec.Raw(_encode(state))


def thaw(raw: msgspec.Raw) -> BucketState:
    """The live bucket back, whole."""
    return _bucket(raw)


def project(raw: msgspec.Raw, groupby: str | None, where: Mapping[str, str]) -> Projection:
    """``thaw(raw).project(groupby, where)``, decoding only what that projection reads."""
    names = {k for k in where if k not in BUILTIN_DIMENSIONS}
    if groupby and (name := attribute_dimension(groupby)) is not None:
        names.add(name)
    if not names:
        return BucketState(series=_series(raw).series).project(groupby, where)
    encoded = _attributes(raw).attributes
    attributes = {name: _values(encoded[name]) for name in sorted(names) if name in encoded}
    return BucketState(attributes=attributes).project(groupby, where)


def attribute_keys(raw: msgspec.Raw) -> list[str]:
    """``list(thaw(raw).attributes)``, without decoding their aggregates."""
    return list(_attributes(raw).attributes)


def freeze_projection(projection: Projection) -> msgspec.Raw:
    """A memoised projection as bytes (a day or hour block's memo)."""
    return msgspec.Raw(_encode(projection))


def thaw_projection(raw: msgspec.Raw) -> Projection:
    """A new projection, sharing nothing, equal to the one frozen."""
    return _projection(raw)
