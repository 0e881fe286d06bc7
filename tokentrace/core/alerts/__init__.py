"""The alert engine's pure core: rules, their validation, the per-rule state machine and evaluation.

No I/O and no clock: the caller passes ``now_ms`` and a :class:`MetricReader`. Delivery, persistence and
the timer live in :mod:`tokentrace.alerting`.
"""

from tokentrace.core.alerts.deliveries import AlertmanagerDelivery, Delivery, StdoutDelivery, WebhookDelivery
from tokentrace.core.alerts.engine import DEFAULT_COOLDOWN_S, Evaluation, Notification, evaluate
from tokentrace.core.alerts.metrics import METRICS, READER_METRICS
from tokentrace.core.alerts.ops import OPS, Op
from tokentrace.core.alerts.reader import MetricReader, MetricReading
from tokentrace.core.alerts.rules import (
    AlertRule,
    InvalidRule,
    Level,
    decode_rule,
    encode_rule,
    rules_from_config,
)
from tokentrace.core.alerts.state import RuleState, RuleStatus

__all__ = [
    "DEFAULT_COOLDOWN_S",
    "METRICS",
    "OPS",
    "READER_METRICS",
    "AlertRule",
    "AlertmanagerDelivery",
    "Delivery",
    "Evaluation",
    "InvalidRule",
    "Level",
    "MetricReader",
    "MetricReading",
    "Notification",
    "Op",
    "RuleState",
    "RuleStatus",
    "StdoutDelivery",
    "WebhookDelivery",
    "decode_rule",
    "encode_rule",
    "evaluate",
    "rules_from_config",
]
