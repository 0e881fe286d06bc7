"""The aiohttp application: one route table over the store, the same for every deployment mode."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Middleware

from tokentrace.api import console
from tokentrace.api.compression import compression_middleware
from tokentrace.api.connections import GUARD, ConnectionGuard, busy_middleware
from tokentrace.api.context import CONTEXT, ServerContext
from tokentrace.api.middleware import auth_middleware, error_middleware
from tokentrace.api.prometheus import handle_prometheus
from tokentrace.api.routes import alerts, dimensions, docs, health, metrics, mist, otlp, series, spans, stats, traces
from tokentrace.core.labels import LabelCaps, LabelLimits
from tokentrace.core.timefmt import parse_duration

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(ctx: ServerContext) -> web.Application:
    """Build the application; the caller owns the store's lifecycle."""
    server = ctx.config.http_server
    # Outermost first: JSON answers (error envelopes included) are gzipped for clients that accept it; errors
    # become the envelope; the token is checked before any body is read.
    middlewares: list[Middleware] = [compression_middleware, error_middleware]
    if server.auth_token is not None:
        middlewares.append(auth_middleware(server.auth_token, console.is_console_path))
        log.info("auth: on (every request needs Authorization: Bearer <http_server.auth_token>)")
    else:
        log.warning("auth: off (http_server.auth_token is not set): every endpoint answers without a token")
    middlewares.append(busy_middleware)
    header_timeout = parse_duration(server.read_header_timeout)
    handler_args = {
        "auto_decompress": False,  # api.body inflates, bounded; aiohttp's inflating went on past a 413
        # aiohttp's own idle timer (an hour by default) only as a backstop: the guard cuts (and counts) first.
        "keepalive_timeout": 2 * header_timeout,
    }
    app = web.Application(middlewares=middlewares, client_max_size=server.max_body_bytes, handler_args=handler_args)
    aggregation = ctx.config.aggregation
    ctx.labels = LabelCaps(
        LabelLimits(aggregation.max_models, aggregation.max_providers, aggregation.max_callers, aggregation.max_series)
    )
    app[CONTEXT] = ctx
    app[GUARD] = ConnectionGuard(server.max_connections, header_timeout, parse_duration(server.read_body_timeout))
    # The Prometheus path is registered before /metrics/{name} so the default path is not a metric name.
    app.router.add_get(server.prometheus_path, handle_prometheus)
    for table in (
        spans.routes,
        otlp.routes,
        mist.routes,
        series.routes,  # before metrics: /metrics/series is not a metric name
        dimensions.routes,  # nor is /metrics/dimensions
        metrics.routes,
        stats.routes,
        traces.routes,
        health.routes,
        alerts.routes,
        docs.routes,
        console.routes,
    ):
        app.router.add_routes(table)
    otlp.init_counters(ctx)
    return app
