"""What a notification looks like on the wire: the webhook payload (README, Alerts) and an Alertmanager alert."""

from __future__ import annotations

import re
from typing import Any

from tokentrace.core.alerts import Notification
from tokentrace.core.timefmt import format_ms

__all__ = ["alertmanager_alert", "alertmanager_labels", "keep_alive_s", "webhook_payload"]

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_]")
_RESERVED = frozenset({"alertname", "severity"})


def webhook_payload(note: Notification) -> dict[str, Any]:
    """The webhook payload ``{alert, fired_at, metric, value, threshold, window}`` + status, level, filter.

    ``fired_at`` is when the firing episode began (the same in its repeats and in its resolution);
    ``value`` is the value at this evaluation, null when there was no data.
    """
    rule = note.rule
    return {
        "alert": rule.name,
        "fired_at": format_ms(note.fired_at_ms),
        "metric": rule.metric,
        "value": note.value,
        "threshold": rule.threshold,
        "window": rule.window,
        "status": note.status,
        "level": rule.level,
        "filter": dict(rule.filter),
    }


def alertmanager_labels(note: Notification) -> dict[str, str]:
    """``alertname``, ``severity`` and one label per filter key (invalid characters become ``_``)."""
    labels = {"alertname": note.rule.name, "severity": note.rule.level}
    for key, value in sorted(note.rule.filter.items()):
        label = _LABEL_BAD.sub("_", key)
        if label[0].isdigit() or label in _RESERVED or label.startswith("__"):
            label = f"filter_{label}"
        labels[label] = value
    return labels


def keep_alive_s(cooldown_s: float) -> float:
    """How long Alertmanager keeps a firing alert without hearing again: past the next re-notification."""
    return max(2 * cooldown_s, cooldown_s + 300)


def alertmanager_alert(note: Notification, generator_url: str) -> dict[str, Any]:
    """One element of the ``POST /api/v2/alerts`` body.

    ``startsAt`` is the episode start. A firing alert's ``endsAt`` lies past the next re-notification
    (:func:`keep_alive_s`), so Alertmanager keeps it active between them and lets it lapse if tokentrace
    stops; a resolution sets ``endsAt`` to the time it resolved.
    """
    rule = note.rule
    value = "no data" if note.value is None else f"{note.value:g}"
    ends_ms = note.at_ms if note.status == "resolved" else note.at_ms + round(keep_alive_s(note.cooldown_s) * 1000)
    scope = ", ".join(f"{k}={v}" for k, v in sorted(rule.filter.items()))
    condition = f"{rule.metric} {rule.op} {rule.threshold:g} over {rule.window}"
    return {
        "labels": alertmanager_labels(note),
        "annotations": {
            "summary": condition + (f" ({scope})" if scope else ""),
            "description": f"{rule.name}: {rule.metric} is {value}, alerting when {condition}",
            "metric": rule.metric,
            "value": value,
            "threshold": f"{rule.threshold:g}",
            "window": rule.window,
        },
        "startsAt": format_ms(note.fired_at_ms),
        "endsAt": format_ms(ends_ms),
        "generatorURL": generator_url,
    }
