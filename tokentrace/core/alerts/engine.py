"""One evaluation round: every rule against the reader at ``now_ms``, giving new states and notifications.

Pure apart from the reader: no clock, no I/O. Rules that ask for the same metric, window and filter share
one read per round. :class:`Round` evaluates rule by rule, so the service can yield to its event loop
between rules when reads are slow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from tokentrace.core.alerts.ops import compare
from tokentrace.core.alerts.reader import MetricReader, MetricReading
from tokentrace.core.alerts.rules import AlertRule
from tokentrace.core.alerts.state import RuleState, step

__all__ = ["DEFAULT_COOLDOWN_S", "Evaluation", "Notification", "Round", "breaches", "evaluate"]

#: Least time between repeated notifications of a rule that keeps firing, unless it sets ``cooldown``.
DEFAULT_COOLDOWN_S = 300.0

_ReadKey = tuple[str, float, tuple[tuple[str, str], ...]]


class Notification(msgspec.Struct, frozen=True):
    """A message to deliver about one rule."""

    rule: AlertRule
    status: Literal["firing", "resolved"]
    #: The metric value at this evaluation (None: no data).
    value: float | None
    #: Start of the firing episode this is about (``fired_at`` in the payload).
    fired_at_ms: int
    #: When this notification was produced (for a resolution: when it resolved).
    at_ms: int
    #: The rule's effective cooldown; Alertmanager delivery keeps the alert alive across it.
    cooldown_s: float


class Evaluation(msgspec.Struct):
    """The result of one round."""

    states: dict[str, RuleState]
    notifications: list[Notification]
    #: Rules that entered ``firing`` in this round, silenced or not.
    started: list[AlertRule]


def breaches(rule: AlertRule, reading: MetricReading) -> bool:
    """Whether ``reading`` fires ``rule``: a value, enough spans, and the comparison holds."""
    value = reading.value
    if value is None or not math.isfinite(value) or reading.span_count < rule.min_spans:
        return False
    return compare(rule.comparison, value, rule.threshold)


class Round:
    """One round in progress: feed it rules one at a time (so a caller can yield between them), then
    take :meth:`result`. Reads are shared between rules of the round."""

    def __init__(
        self,
        states: Mapping[str, RuleState],
        silences: Mapping[str, int],
        reader: MetricReader,
        now_ms: int,
        default_cooldown_s: float = DEFAULT_COOLDOWN_S,
    ) -> None:
        self._states = states
        self._silences = silences
        self._reader = reader
        self.now_ms = now_ms
        self._default_cooldown_s = default_cooldown_s
        self._reads: dict[_ReadKey, MetricReading | Exception] = {}
        self._result = Evaluation(states={}, notifications=[], started=[])

    def _read(self, rule: AlertRule) -> MetricReading | Exception:
        key = (rule.reader_metric, rule.window_s, tuple(sorted(rule.filter.items())))
        reading = self._reads.get(key)
        if reading is None:
            try:
                reading = self._reader.read(key[0], key[1], rule.filter, self.now_ms)
            except Exception as exc:  # a broken read must not stop the other rules
                reading = exc
            self._reads[key] = reading
        return reading

    def add(self, rule: AlertRule) -> None:
        """Evaluate one rule."""
        now_ms, result = self.now_ms, self._result
        previous = self._states.get(rule.name) or RuleState()
        reading = self._read(rule)
        if isinstance(reading, Exception):
            error = f"{type(reading).__name__}: {reading}"
            result.states[rule.name] = msgspec.structs.replace(previous, last_evaluated_ms=now_ms, error=error)
            return
        cooldown_s = rule.cooldown_s(self._default_cooldown_s)
        silenced_until = self._silences.get(rule.name)
        value = None if reading.value is None or not math.isfinite(reading.value) else float(reading.value)
        outcome = step(
            previous,
            breached=breaches(rule, reading),
            value=value,
            span_count=reading.span_count,
            now_ms=now_ms,
            cooldown_ms=round(cooldown_s * 1000),
            silenced=silenced_until is not None and now_ms < silenced_until,
        )
        result.states[rule.name] = outcome.state
        if outcome.started:
            result.started.append(rule)
        if outcome.notify is not None:
            fired_at = outcome.state.last_fired_ms
            result.notifications.append(
                Notification(
                    rule=rule,
                    status=outcome.notify,
                    value=value,
                    fired_at_ms=now_ms if fired_at is None else fired_at,
                    at_ms=now_ms,
                    cooldown_s=cooldown_s,
                )
            )

    def result(self) -> Evaluation:
        """States of the rules added so far, their notifications and the rules that started firing."""
        return self._result


def evaluate(
    rules: Sequence[AlertRule],
    states: Mapping[str, RuleState],
    silences: Mapping[str, int],
    reader: MetricReader,
    now_ms: int,
    default_cooldown_s: float = DEFAULT_COOLDOWN_S,
) -> Evaluation:
    """Evaluate ``rules`` (keyed by name in ``states`` and ``silences``, silences as epoch-ms ends)."""
    round_ = Round(states, silences, reader, now_ms, default_cooldown_s)
    for rule in rules:
        round_.add(rule)
    return round_.result()
