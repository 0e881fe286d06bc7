"""Alert rules: the schema shared by code (``AlertRule(...)``), ``tokentrace.yml`` and ``POST /alerts``.

Decoding validates: a bad rule raises :class:`InvalidRule` whose message starts with the field at fault
(``threshold: Expected `float`, got `str```, ``delivery.url: expected an absolute http(s) URL``).
Constructed rules are normalised: ``op`` is canonical (``>`` becomes ``gt``), ``threshold`` a float,
``window`` and ``cooldown`` duration text.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

import msgspec

from tokentrace.core.alerts.deliveries import Delivery
from tokentrace.core.alerts.durations import duration_text, seconds
from tokentrace.core.alerts.metrics import METRICS, RATIO_METRICS, canonical_metric
from tokentrace.core.alerts.ops import Op, normalize_op

__all__ = [
    "DEFAULT_WINDOW",
    "AlertRule",
    "InvalidRule",
    "Level",
    "decode_rule",
    "describe_validation_error",
    "encode_rule",
    "rules_from_config",
]

Level = Literal["warning", "critical"]
LEVELS: tuple[Level, ...] = ("warning", "critical")
#: Filter keys that match span fields; any other key is an attribute key (at most one per rule, as the
#: aggregates index one attribute at a time).
SPAN_FIELDS: tuple[str, ...] = ("model", "provider", "caller")
DEFAULT_WINDOW = "1h"
#: Rule names appear in URL paths (``/alerts/{name}``) and Alertmanager labels.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class InvalidRule(ValueError):
    """A rule (or a silence request) failed validation; the message names the field."""


class AlertRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A threshold rule: fire when ``metric`` over the last ``window`` is ``op threshold``.

    ``cooldown`` is the minimum time between repeated notifications while the rule keeps firing (None:
    the service default, 5m, ``engine.DEFAULT_COOLDOWN_S``). ``min_spans`` is the least number of spans in the window
    for the rule to fire at all. ``filter`` narrows the spans: keys ``model``, ``provider`` and
    ``caller`` match those fields, any other key is a span attribute (one at most). ``delivery`` None means the
    service's default delivery.
    """

    name: str
    metric: str
    op: str
    threshold: float
    window: str | float = DEFAULT_WINDOW
    cooldown: str | float | None = None
    min_spans: int = 0
    filter: dict[str, str] = {}
    level: Level = "warning"
    delivery: Delivery | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"name: {self.name!r} must be 1-128 characters of letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit"
            )
        if self.metric not in METRICS:
            known = ", ".join(sorted(METRICS))
            raise ValueError(f"metric: unknown metric {self.metric!r}, use one of {known}")
        set_field = msgspec.structs.force_setattr
        set_field(self, "op", normalize_op(self.op))
        threshold = self.threshold
        number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not number or not math.isfinite(threshold):
            raise ValueError(f"threshold: must be a finite number, got {threshold!r}")
        if self.metric in RATIO_METRICS and not 0 <= threshold <= 1:
            raise ValueError(f"threshold: {self.metric} is a fraction from 0 to 1 (0.05 = 5%), got {threshold!r}")
        set_field(self, "threshold", float(threshold))
        set_field(self, "window", duration_text(self.window, "window"))
        if self.cooldown is not None:
            set_field(self, "cooldown", duration_text(self.cooldown, "cooldown"))
        if isinstance(self.min_spans, bool) or not isinstance(self.min_spans, int) or self.min_spans < 0:
            raise ValueError(f"min_spans: must be a whole number >= 0, got {self.min_spans!r}")
        for key, value in self.filter.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise ValueError(f"filter: keys and values must be strings, got {key!r}: {value!r}")
        attribute_keys = sorted(set(self.filter) - set(SPAN_FIELDS))
        if len(attribute_keys) > 1:
            raise ValueError(
                f"filter: at most one attribute key besides {', '.join(SPAN_FIELDS)}, got {', '.join(attribute_keys)}"
            )
        if self.level not in LEVELS:
            raise ValueError(f"level: must be warning or critical, got {self.level!r}")

    @property
    def comparison(self) -> Op:
        """The canonical operator."""
        return cast(Op, self.op)

    @property
    def reader_metric(self) -> str:
        """The metric name the reader is asked for (MIST-era aliases resolved, ``metrics.ALIASES``)."""
        return canonical_metric(self.metric)

    @property
    def window_s(self) -> float:
        """The window in seconds."""
        return seconds(str(self.window))

    def cooldown_s(self, default_s: float) -> float:
        """The cooldown in seconds, ``default_s`` when the rule sets none."""
        return default_s if self.cooldown is None else seconds(str(self.cooldown))


_FIELD_MESSAGE = re.compile(r"[a-z_]+: ")
_MISSING_OR_UNKNOWN = re.compile(r"Object (missing required|contains unknown) field `(.+)`")


def describe_validation_error(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's ``msg - at `$.a.b``` into ``a.b: msg``, so every message starts with the field."""
    message, sep, path = str(exc).rpartition(" - at `")
    if not sep:
        message, path = str(exc), ""
    where = path.rstrip("`").removeprefix("$").lstrip(".")
    prefix = f"{where}." if where else ""
    if match := _MISSING_OR_UNKNOWN.fullmatch(message):
        what = "required field missing" if match.group(1) == "missing required" else "unknown field"
        return f"{prefix}{match.group(2)}: {what}"
    if _FIELD_MESSAGE.match(message) or not where:
        return f"{prefix}{message}"  # post-init messages already name their field
    return f"{where}: {message}"


_decoder = msgspec.json.Decoder(AlertRule)


def decode_rule(body: bytes) -> AlertRule:
    """Decode and validate a rule from JSON (the ``POST /alerts`` body)."""
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRule(describe_validation_error(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRule(f"malformed JSON: {exc}") from None


def _filter_text(value: Any) -> Any:
    """YAML scalars as filter text: ``1`` → ``"1"``, ``true`` → ``"true"``; anything else unchanged."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, (int, float)) else value


def _config_item(item: Any, index: int) -> Any:
    if not isinstance(item, Mapping):
        raise InvalidRule(f"alerts[{index}]: expected a mapping, got {type(item).__name__}")
    item = dict(item)
    if not item.get("name") and {"metric", "op", "threshold"} <= item.keys():
        op = str(item["op"])
        with contextlib.suppress(ValueError):
            op = normalize_op(op)
        item["name"] = f"{item['metric']}_{op}_{item['threshold']}"
    flt = item.get("filter")
    if isinstance(flt, Mapping):
        item["filter"] = {key: _filter_text(val) for key, val in flt.items()}
    return item


def rules_from_config(items: Iterable[Any]) -> list[AlertRule]:
    """Rules from the ``alerts:`` list of ``tokentrace.yml`` (already parsed YAML).

    A rule without ``name`` (as MIST-era rules are written) is named ``<metric>_<op>_<threshold>``; scalar filter
    values become strings. Errors name the item and field: ``alerts[2].window: ...``.
    """
    rules: list[AlertRule] = []
    for index, item in enumerate(items):
        try:
            rules.append(msgspec.convert(_config_item(item, index), AlertRule))
        except msgspec.ValidationError as exc:
            raise InvalidRule(f"alerts[{index}].{describe_validation_error(exc)}") from None
    return rules


def encode_rule(rule: AlertRule) -> dict[str, Any]:
    """The rule as JSON-ready builtins, omitting unset optional fields."""
    data = cast(dict[str, Any], msgspec.to_builtins(rule))
    return {key: value for key, value in data.items() if value is not None}
