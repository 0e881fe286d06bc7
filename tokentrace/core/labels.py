"""Cardinality caps on the label sets: how many distinct models, providers, callers and series are kept.

Every distinct ``model``/``provider``/``caller`` is a group in every bucket, a lifetime series kept forever
(snapshotted, so it survives restarts) and a label set in every Prometheus family: 100k distinct model
names made a 128 MB exposition that took 21 s to render. ``LabelCaps`` admits the values it has seen up to
a cap per dimension; a span with a value beyond the cap has it replaced by ``__overflow__`` (the span is
still counted, in the ``__overflow__`` group) and the original kept in the attribute
``tokentrace.overflow.<label>``, so ``/traces`` still shows it. A new (model, provider, caller) combination
beyond ``max_series`` folds all three. Every fold is counted by label, for
``tokentrace_folded_labels_total{label}``.

The caps are per process: each API replica of a distributed deployment admits its own (bounded) set, and
a restarted server reseeds from the store's lifetime series, so values admitted before stay admitted.
Spans produced straight to Kafka pass no API: the workers bound those with the per-bucket series cap
(``Caps.max_series``, tokentrace/core/buckets.py), the same ``max_series``, decided per partition and bucket.
Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tokentrace.core.buckets import OVERFLOW, SEP
from tokentrace.core.span import Span

__all__ = ["FOLDED_ATTRIBUTE_PREFIX", "LABELS", "LabelCaps", "LabelLimits"]

LABELS = ("model", "provider", "caller")
#: Where a folded value is kept on the span: ``tokentrace.overflow.model`` etc.
FOLDED_ATTRIBUTE_PREFIX = "tokentrace.overflow."


@dataclass(frozen=True)
class LabelLimits:
    """Distinct values kept per label, and distinct (model, provider, caller) series."""

    max_models: int = 1000
    max_providers: int = 100
    max_callers: int = 1000
    max_series: int = 10_000


@dataclass
class LabelCaps:
    """The admitted values; ``admit`` folds what is beyond the caps."""

    limits: LabelLimits = field(default_factory=LabelLimits)
    #: Spans whose value of a label was folded, by label (``series`` for a combination folded whole).
    folded: Counter[str] = field(default_factory=Counter)
    _values: tuple[set[str], set[str], set[str]] = field(default_factory=lambda: (set(), set(), set()))
    _series: set[str] = field(default_factory=set)

    def seed(self, series_keys: Iterable[str]) -> None:
        """Admit the series already stored (``model SEP provider SEP caller`` keys), caps or not."""
        for key in series_keys:
            parts = key.split(SEP)
            if len(parts) != len(LABELS):
                continue
            self._series.add(key)
            for values, value in zip(self._values, parts, strict=True):
                values.add(value)

    @property
    def admitted_series(self) -> set[str]:
        """The series (``model SEP provider SEP caller``) whose spans ``admit`` leaves as they are: the set itself,
        not a copy (read it, never change it)."""
        return self._series

    def admit(self, spans: Sequence[Span]) -> None:
        """Fold, in place, every label value of ``spans`` beyond its cap into ``__overflow__``."""
        limits = (self.limits.max_models, self.limits.max_providers, self.limits.max_callers)
        models, providers, callers = self._values
        for span in spans:
            key = f"{span.model}{SEP}{span.provider}{SEP}{span.caller}"
            if key in self._series:
                continue  # the usual span: its series is known
            parts = [span.model, span.provider, span.caller]
            for index, (values, limit) in enumerate(zip((models, providers, callers), limits, strict=True)):
                value = parts[index]
                if value in values or value == OVERFLOW:
                    continue
                if len(values) < limit:
                    values.add(value)
                else:
                    parts[index] = OVERFLOW
                    self._fold(span, LABELS[index], value)
            key = SEP.join(parts)
            if key not in self._series:
                if len(self._series) < self.limits.max_series:
                    self._series.add(key)
                else:
                    self.folded["series"] += 1
                    for index, label in enumerate(LABELS):
                        if parts[index] != OVERFLOW:
                            self._fold(span, label, parts[index], count=False)
                            parts[index] = OVERFLOW
                    self._series.add(SEP.join(parts))
            span.model, span.provider, span.caller = parts

    def _fold(self, span: Span, label: str, value: str, *, count: bool = True) -> None:
        if count:
            self.folded[label] += 1
        if value:
            span.attributes = {**span.attributes, FOLDED_ATTRIBUTE_PREFIX + label: value}
