"""Where several processes share alert state: the evaluator's rule states, firing counts and delivery stats.

In distributed mode one worker evaluates (the Faust leader) and any number of API replicas answer
``GET /alerts``. A leader change, or two workers that both believe they lead for a moment, must not
announce an episode twice, so every state write is a compare-and-set on the rule's revision: an
evaluator that loaded revision *r* may only write *r + 1*, and it delivers a round's notifications only
for the rules whose write won. Firing counts move in the same atomic write, so they count episodes,
not evaluators.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from tokentrace.alerting.delivery import DeliveryStats
from tokentrace.core.alerts import RuleState

__all__ = ["AlertLedger", "LedgerView", "StateWrite"]


class StateWrite(NamedTuple):
    """One rule's new state, valid only if the stored revision is still ``revision``."""

    name: str
    revision: int
    state: RuleState
    #: The rule's level when it entered firing in this round (counts one firing), else None.
    started_level: str | None = None


class LedgerView(NamedTuple):
    """Everything the ledger holds, as read at one moment."""

    #: Rule name → (revision, state).
    states: Mapping[str, tuple[int, RuleState]]
    #: (rule name, level) → times it entered firing.
    firings: Mapping[tuple[str, str], int]
    #: Rule name → the evaluator's delivery counters.
    deliveries: Mapping[str, DeliveryStats]


class AlertLedger(Protocol):
    """Shared alert state (see the module docstring)."""

    async def read(self) -> LedgerView: ...

    async def write(self, writes: Sequence[StateWrite]) -> set[str]:
        """Apply each write whose revision still matches; the names of those applied."""
        ...

    async def publish_deliveries(self, stats: Mapping[str, DeliveryStats]) -> None: ...

    async def forget(self, names: Sequence[str]) -> None:
        """Drop the state of deleted rules (firing counts stay: counters never go down)."""
        ...
