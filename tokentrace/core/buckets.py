"""One time bucket's aggregates, kept per series and per attribute value.

A *series* is a (model, provider, caller) triple: every built-in dimension is a merge of series, so a span
updates one series aggregate plus one aggregate per grouped attribute, whatever the query later asks for.
Attribute groups are crossed with the series so an alert can filter on an attribute and a model at once.
Cardinality is capped per bucket: past ``max_attribute_keys`` keys an attribute is not grouped, past
``max_attribute_values`` values of one key the rest share the value ``OVERFLOW``; both are counted
(``overflowed``). Past ``max_series`` series (the ``OVERFLOW_SERIES`` key not counted), a span of a series the
bucket does not hold yet counts in ``OVERFLOW_SERIES`` instead (its attribute groups too), counted in
``overflowed_series``: the bound for spans that reach the workers straight from Kafka, past the API's
``LabelCaps``. Each decision is a function of the bucket and the spans, in order, so a replayed partition
decides as the first run did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

from tokentrace.core import aggregate as _aggregate
from tokentrace.core import native
from tokentrace.core.aggregate import Aggregate
from tokentrace.core.span import EVAL_SCORE, Span

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = [
    "BUILTIN_DIMENSIONS",
    "OVERFLOW",
    "OVERFLOW_SERIES",
    "SEP",
    "SERIES",
    "BucketState",
    "Caps",
    "Projection",
    "attribute_dimension",
    "series_key",
]

SEP = "\x1f"
OVERFLOW = "__overflow__"
#: The series key a span beyond ``max_series`` counts in: all three labels folded, as ``LabelCaps`` folds a series.
OVERFLOW_SERIES = SEP.join((OVERFLOW, OVERFLOW, OVERFLOW))
#: ``groupby`` value that groups by whole series keys (``model SEP provider SEP caller``).
SERIES = "__series__"
BUILTIN_DIMENSIONS = ("model", "provider", "caller")
_DIMENSION_INDEX = {name: i for i, name in enumerate(BUILTIN_DIMENSIONS)}
#: Grouped values by dimension value ("" for the whole bucket when ungrouped).
Projection = dict[str, Aggregate]
#: ``BucketState.add_many`` compiled (tokentrace/core/native.py), or None where it runs in Python.
_KERNEL = (
    native.BucketKernel(SEP, OVERFLOW, EVAL_SCORE, Aggregate, _aggregate._KERNEL)
    if native.BucketKernel is not None and _aggregate._KERNEL is not None
    else None
)


class Caps(msgspec.Struct, frozen=True):
    """Bounds on attribute grouping and on distinct series per bucket."""

    max_attribute_keys: int = 32
    max_attribute_values: int = 100
    #: Series kept apart per bucket (``OVERFLOW_SERIES`` aside); ``aggregation.max_series``.
    max_series: int = 10_000


def series_key(span: Span) -> str:
    return f"{span.model}{SEP}{span.provider}{SEP}{span.caller}"


def attribute_dimension(name: str) -> str | None:
    """The attribute key a ``groupby`` names, or None for a built-in dimension."""
    return None if name in _DIMENSION_INDEX or name == SERIES else name


def _attribute_text(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    return None  # floats are measurements, not groups


class BucketState(msgspec.Struct):
    """Aggregates of one bucket: ``series[model SEP provider SEP caller]`` and
    ``attributes[key][value][model SEP provider SEP caller]``."""

    series: dict[str, Aggregate] = {}
    attributes: dict[str, dict[str, dict[str, Aggregate]]] = {}
    overflowed: int = 0
    #: Spans counted in ``OVERFLOW_SERIES`` because the bucket held ``max_series`` series already.
    overflowed_series: int = 0

    def add(self, span: Span, caps: Caps) -> None:
        """Count one span in its series and in each groupable attribute."""
        self._add(span, self._admit(series_key(span), caps.max_series), caps)

    def _admit(self, key: str, max_series: int) -> str:
        """The series key a span of series ``key`` counts in: ``key`` if the bucket holds it or has room for it,
        else ``OVERFLOW_SERIES`` (counted). Does not create the series."""
        series = self.series
        if key in series or key == OVERFLOW_SERIES:
            return key
        if len(series) - (OVERFLOW_SERIES in series) < max_series:
            return key
        self.overflowed_series += 1
        return OVERFLOW_SERIES

    def _admit_all(self, keys: list[str], max_series: int) -> list[str]:
        """``_admit`` for each key in order, as if each admitted series were created before the next."""
        series = self.series
        room = max_series - (len(series) - (OVERFLOW_SERIES in series))
        created: set[str] = set()
        out = keys
        for at, key in enumerate(keys):
            if key in series or key in created or key == OVERFLOW_SERIES:
                continue
            if room > 0:
                room -= 1
                created.add(key)
                continue
            if out is keys:
                out = list(keys)
            out[at] = OVERFLOW_SERIES
            self.overflowed_series += 1
        return out

    def add_many(self, spans: Sequence[Span], caps: Caps) -> None:
        """Count several spans: the same state, dict order and overflow counts included, as ``add`` for
        each in order. Spans are grouped by target aggregate first, so each aggregate is updated in bulk
        (``Aggregate.add_many``), unless no series has enough of them for that to pay. The compiled kernel,
        where installed, does the grouping unless a span holds a value it leaves to this code."""
        kernel = _KERNEL
        if kernel is not None and kernel.add_many(
            self, spans, caps.max_attribute_keys, caps.max_attribute_values, caps.max_series
        ):
            return
        keys = self._admit_all(
            [f"{span.model}{SEP}{span.provider}{SEP}{span.caller}" for span in spans], caps.max_series
        )
        by_series: dict[str, list[Span]] = {}
        for span, key in zip(spans, keys, strict=True):
            members = by_series.get(key)
            if members is None:
                members = by_series[key] = []
            members.append(span)
        if max(map(len, by_series.values()), default=0) < _aggregate.BULK_FROM:
            for span, key in zip(spans, keys, strict=True):
                self._add(span, key, caps)
            return
        # Attribute groups are created in span order (it decides dict order and the caps), their spans
        # queued by the group's id (every group lives in self.attributes throughout).
        by_group: dict[int, tuple[Aggregate, list[Span]]] = {}
        for span, key in zip(spans, keys, strict=True):
            if span.attributes:
                for group in self._attribute_groups(span, key, caps):
                    slot = by_group.get(id(group))
                    if slot is None:
                        slot = by_group[id(group)] = (group, [])
                    slot[1].append(span)
        series = self.series
        for key, members in by_series.items():
            aggregate = series.get(key)
            if aggregate is None:
                aggregate = series[key] = Aggregate()
            aggregate.add_many(members)
        for group, members in by_group.values():
            group.add_many(members)

    def add_batches(self, segments: list[tuple[WireBatch, list[int]]], caps: Caps) -> None:
        """Count the spans of compiled batches (``native.decode_batch``), each batch's spans in the listed
        buckets, in order: the same state as ``add_many`` of the equal spans. Only where the kernel is installed
        (batches exist only there)."""
        if _KERNEL is None:
            raise RuntimeError("compiled span batches need the compiled bucket kernel")
        _KERNEL.add_batches(self, segments, caps.max_attribute_keys, caps.max_attribute_values, caps.max_series)

    @staticmethod
    def add_batch_to(targets: list[tuple[BucketState, list[int]]], batch: WireBatch, caps: Caps) -> None:
        """Count a compiled batch's spans into several states: each ``(state, bucket starts)`` takes the spans in
        those buckets, as ``add_batches([(batch, starts)])`` on each in turn would, in one compiled call."""
        if _KERNEL is None:
            raise RuntimeError("compiled span batches need the compiled bucket kernel")
        _KERNEL.add_batch_to_states(batch, targets, caps.max_attribute_keys, caps.max_attribute_values, caps.max_series)

    def _add(self, span: Span, key: str, caps: Caps) -> None:
        aggregate = self.series.get(key)
        if aggregate is None:
            aggregate = self.series[key] = Aggregate()
        aggregate.add(span)
        if span.attributes:
            for group in self._attribute_groups(span, key, caps):
                group.add(span)

    def _attribute_groups(self, span: Span, key: str, caps: Caps) -> list[Aggregate]:
        """The attribute aggregates ``span`` counts in (created as needed), applying the caps."""
        groups: list[Aggregate] = []
        for name, raw in span.attributes.items():
            if name == EVAL_SCORE:
                continue
            value = raw if type(raw) is str else _attribute_text(raw)
            if value is None:
                continue
            values = self.attributes.get(name)
            if values is None:
                if len(self.attributes) >= caps.max_attribute_keys:
                    self.overflowed += 1
                    continue
                values = self.attributes[name] = {}
            by_series = values.get(value)
            if by_series is None:
                if len(values) >= caps.max_attribute_values:
                    self.overflowed += 1
                    value = OVERFLOW
                    by_series = values.get(value)
                if by_series is None:
                    by_series = values[value] = {}
            group = by_series.get(key)
            if group is None:
                group = by_series[key] = Aggregate()
            groups.append(group)
        return groups

    def merge(self, other: BucketState, caps: Caps | None = None) -> None:
        """Add another bucket's aggregates into this one.

        With ``caps`` (compaction into hours, retirement), the merged bucket keeps the per-bucket caps too: a
        key beyond ``max_attribute_keys`` is not kept and a value beyond ``max_attribute_values`` joins
        ``OVERFLOW``, each counted in ``overflowed`` by the spans it held; a series beyond ``max_series`` joins
        ``OVERFLOW_SERIES`` (in the attribute groups too), counted in ``overflowed_series`` by its spans.
        Otherwise the union of many capped minutes grew without bound in the hour buckets and the retired
        totals. Which series are kept depends on the order of the merges: merge in a fixed order (by start).
        """
        folded: set[str] = set()
        if caps is None:
            _merge_groups(self.series, other.series)
        else:
            room = caps.max_series - (len(self.series) - (OVERFLOW_SERIES in self.series))
            for key, aggregate in other.series.items():
                if key not in self.series and key != OVERFLOW_SERIES:
                    if room <= 0:
                        folded.add(key)
                        self.overflowed_series += aggregate.count
                        key = OVERFLOW_SERIES
                    else:
                        room -= 1
                _add_into(self.series, key, aggregate)
        for name, values in other.attributes.items():
            mine = self.attributes.get(name)
            if mine is None:
                if caps is not None and len(self.attributes) >= caps.max_attribute_keys:
                    self.overflowed += _spans_in(values)
                    continue
                mine = self.attributes[name] = {}
            for value, by_series in values.items():
                target = mine.get(value)
                if target is None:
                    if caps is not None and len(mine) >= caps.max_attribute_values and value != OVERFLOW:
                        self.overflowed += sum(a.count for a in by_series.values())
                        value = OVERFLOW
                        target = mine.get(value)
                    if target is None:
                        target = mine[value] = {}
                if folded:
                    for key, aggregate in by_series.items():
                        _add_into(target, OVERFLOW_SERIES if key in folded else key, aggregate)
                else:
                    _merge_groups(target, by_series)
        self.overflowed += other.overflowed
        self.overflowed_series += other.overflowed_series

    def project(self, groupby: str | None, where: Mapping[str, str]) -> Projection:
        """Aggregates grouped by ``groupby`` (None: one group ``""``), over spans matching ``where``.

        ``where`` maps built-in dimensions and at most one attribute key to required values.
        """
        attribute_filters = [(k, v) for k, v in where.items() if k not in _DIMENSION_INDEX]
        if len(attribute_filters) > 1:
            raise ValueError("a filter may name at most one attribute key")
        builtin_filters = [(_DIMENSION_INDEX[k], v) for k, v in where.items() if k in _DIMENSION_INDEX]
        group_attribute = attribute_dimension(groupby) if groupby else None
        if group_attribute is not None and attribute_filters and attribute_filters[0][0] != group_attribute:
            raise ValueError("groupby on one attribute cannot be combined with a filter on another")

        out: Projection = {}
        if group_attribute is not None or attribute_filters:
            name = group_attribute if group_attribute is not None else attribute_filters[0][0]
            wanted = attribute_filters[0][1] if attribute_filters else None
            for value, by_series in self.attributes.get(name, {}).items():
                if wanted is not None and value != wanted:
                    continue
                for key, aggregate in by_series.items():
                    if builtin_filters and not _matches(key.split(SEP), builtin_filters):
                        continue
                    _add_into(out, value if group_attribute is not None else "", aggregate)
            return out
        index = _DIMENSION_INDEX[groupby] if groupby and groupby != SERIES else None
        for key, aggregate in self.series.items():
            parts = key.split(SEP)
            if builtin_filters and not _matches(parts, builtin_filters):
                continue
            group = parts[index] if index is not None else (key if groupby == SERIES else "")
            _add_into(out, group, aggregate)
        return out


def _spans_in(values: Mapping[str, Mapping[str, Aggregate]]) -> int:
    return sum(a.count for by_series in values.values() for a in by_series.values())


def _matches(parts: tuple[str, ...] | list[str], filters: list[tuple[int, str]]) -> bool:
    return all(parts[i] == v for i, v in filters)


def _add_into(out: Projection, group: str, aggregate: Aggregate) -> None:
    mine = out.get(group)
    if mine is None:
        out[group] = aggregate.copy()
    else:
        mine.merge(aggregate)


def _merge_groups(into: dict[str, Aggregate], other: dict[str, Aggregate]) -> None:
    for key, aggregate in other.items():
        _add_into(into, key, aggregate)
