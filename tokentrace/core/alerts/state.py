"""The per-rule state machine: ok → firing → resolved, with cooldown re-notification and silences.

Pure: :func:`step` takes the previous state, what this evaluation saw and the time, and returns the
next state and which notification (if any) to send.

- A rule **fires** when the value breaches the threshold with at least ``min_spans`` spans; too little
  data or no value counts as not breached (as in Prometheus, the alert then resolves).
- Entering ``firing`` notifies at once; while it keeps firing it re-notifies once ``cooldown`` has passed
  since the last notification.
- Leaving ``firing`` goes to ``resolved`` and sends a resolution, but only if the firing was announced.
- A silenced rule is evaluated and changes state, but sends nothing. When the silence ends, a rule still
  firing is announced, and a rule that resolved during the silence after being announced sends its
  resolution then, so a receiver never keeps an incident open that tokentrace has closed.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import msgspec

__all__ = ["NotifyKind", "RuleState", "RuleStatus", "Step", "step"]

#: A rule's alert status (a span's ``ok``/``error``/``timeout`` is ``tokentrace.core.span.Status``).
RuleStatus = Literal["ok", "firing", "resolved"]
NotifyKind = Literal["firing", "resolved"]


class RuleState(msgspec.Struct, frozen=True):
    """What the engine remembers about one rule between evaluations (times in epoch ms)."""

    status: RuleStatus = "ok"
    #: Start of the current firing episode (None when not firing).
    firing_since_ms: int | None = None
    #: Start of the latest firing episode, kept after it resolves.
    last_fired_ms: int | None = None
    last_evaluated_ms: int | None = None
    last_notified_ms: int | None = None
    #: A firing notification went out and its resolution has not yet.
    announced: bool = False
    value: float | None = None
    span_count: int = 0
    #: Why the last evaluation could not read the metric.
    error: str | None = None


class Step(NamedTuple):
    """The outcome of one evaluation of one rule."""

    state: RuleState
    notify: NotifyKind | None
    #: The rule entered ``firing`` in this step (counted by ``tokentrace_alert_firings_total``).
    started: bool


def step(
    state: RuleState,
    *,
    breached: bool,
    value: float | None,
    span_count: int,
    now_ms: int,
    cooldown_ms: int,
    silenced: bool,
) -> Step:
    """Advance ``state`` by one evaluation at ``now_ms``."""
    seen = {"value": value, "span_count": span_count, "last_evaluated_ms": now_ms, "error": None}
    if breached:
        started = state.status != "firing"
        since = now_ms if started else state.firing_since_ms
        last_fired = now_ms if started else state.last_fired_ms
        due = not state.announced or state.last_notified_ms is None or now_ms - state.last_notified_ms >= cooldown_ms
        if due and not silenced:
            nxt = msgspec.structs.replace(
                state,
                status="firing",
                firing_since_ms=since,
                last_fired_ms=last_fired,
                last_notified_ms=now_ms,
                announced=True,
                **seen,
            )
            return Step(nxt, "firing", started)
        nxt = msgspec.structs.replace(state, status="firing", firing_since_ms=since, last_fired_ms=last_fired, **seen)
        return Step(nxt, None, started)
    status: RuleStatus = "resolved" if state.status in ("firing", "resolved") else "ok"
    if state.announced and not silenced:
        nxt = msgspec.structs.replace(state, status=status, firing_since_ms=None, announced=False, **seen)
        return Step(nxt, "resolved", False)
    return Step(msgspec.structs.replace(state, status=status, firing_since_ms=None, **seen), None, False)
