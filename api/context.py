"""What every handler can reach: the store, the configuration, the price table and ingest counters."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tokentrace.api.stores.base import Store
from tokentrace.config import Config
from tokentrace.core.ingest import Pricer
from tokentrace.core.labels import LabelCaps
from tokentrace.version import __version__

if TYPE_CHECKING:
    from tokentrace.alerting.service import AlertService

__all__ = ["CONTEXT", "ServerContext"]

#: The running package's version (``GET /health``), from its metadata (``tokentrace.version``).
VERSION = __version__


@dataclass
class ServerContext:
    store: Store
    config: Config
    pricer: Pricer | None
    alerts: AlertService | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    #: Ingest requests rejected, by reason (invalid, too_old, future, too_large, unavailable).
    rejected: Counter[str] = field(default_factory=Counter)
    #: Extra Prometheus families contributed by the deployment (e.g. poison messages in distributed mode).
    extra_counters: dict[str, Any] = field(default_factory=dict)
    #: Extra Prometheus gauges likewise (e.g. the view's lag behind the span topic).
    extra_gauges: dict[str, Any] = field(default_factory=dict)
    version: str = VERSION
    #: The label cardinality caps (seeded from the store's lifetime series on the first ingest).
    labels: LabelCaps = field(default_factory=LabelCaps)
    labels_seeded: bool = False

    @property
    def uptime_s(self) -> int:
        return int(time.monotonic() - self.started_monotonic)


CONTEXT = web.AppKey("tokentrace_context", ServerContext)
