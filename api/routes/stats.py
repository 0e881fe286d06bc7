"""``GET /stats``: the MIST-era totals (README, "Seed 001 (MIST) compatibility"), read from the store's lifetime aggregates (as Prometheus reads them).

``by_operation`` groups the attribute ``mist.operation`` that ``POST /mist`` records, so it needs no
aggregation of its own: spans sent elsewhere (``POST /spans``) count in the totals but have no operation.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tokentrace.api.context import CONTEXT
from tokentrace.api.cycles import cycles_wait
from tokentrace.api.responses import json_response
from tokentrace.core.aggregate import Aggregate
from tokentrace.core.buckets import Projection
from tokentrace.core.metrics import scalar_value
from tokentrace.core.mist import OPERATION_ATTRIBUTE
from tokentrace.core.timeline import total

__all__ = ["SEED_FIELDS", "routes", "stats_body"]

routes = web.RouteTableDef()
#: The fields of the seed's ``AggregatorStats``, each the scalar metric of the same name.
SEED_FIELDS = (
    "total_spans",
    "error_count",
    "error_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_avg_ms",
    "total_tokens_in",
    "total_tokens_out",
    "total_cost_usd",
)


def stats_body(overall: Aggregate, by_operation: Projection) -> dict[str, Any]:
    """The body of ``GET /stats``: seed fields, ``unpriced_span_count`` and ``{op: {count, errors}}``."""
    body: dict[str, Any] = {name: scalar_value(name, overall) for name in SEED_FIELDS}
    body["unpriced_span_count"] = overall.unpriced
    body["by_operation"] = {op: {"count": a.count, "errors": a.errors} for op, a in sorted(by_operation.items())}
    return body


@routes.get("/stats")
async def get_stats(request: web.Request) -> web.Response:
    store = request.app[CONTEXT].store
    # Summed in a thread from parts the store no longer changes (a lifetime of many groups takes seconds).
    everything, operations = await store.lifetime_parts(None), await store.lifetime_parts(OPERATION_ATTRIBUTE)

    def work() -> dict[str, Any]:
        with cycles_wait():  # full collections would walk what the sums build, again and again
            return stats_body(total(everything.total()), operations.total())

    body = await asyncio.to_thread(work)
    everything.install()
    await asyncio.sleep(0)  # one part per turn of the loop
    operations.install()
    return json_response(body)
