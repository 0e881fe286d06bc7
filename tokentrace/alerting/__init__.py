"""Alerting I/O: the service the HTTP server and workers run, delivery to stdout, webhooks and
Alertmanager, and persistence of API rules and silences. The pure engine is :mod:`tokentrace.core.alerts`.
"""

from tokentrace.alerting.delivery import DeliveryStats, Dispatcher, RetryPolicy
from tokentrace.alerting.errors import AlertError
from tokentrace.alerting.repository import (
    FileRuleRepository,
    MemoryRuleRepository,
    RuleRepository,
    Snapshot,
    StoredRule,
)
from tokentrace.alerting.service import AlertService, RuleSource

__all__ = [
    "AlertError",
    "AlertService",
    "DeliveryStats",
    "Dispatcher",
    "FileRuleRepository",
    "MemoryRuleRepository",
    "RetryPolicy",
    "RuleRepository",
    "RuleSource",
    "Snapshot",
    "StoredRule",
]
