"""``/alerts``: list rules with their state, create, silence and delete them (README, Alerts; api/openapi.yaml)."""

from __future__ import annotations

from aiohttp import web

from tokentrace.alerting.errors import AlertError
from tokentrace.alerting.service import AlertService
from tokentrace.api.context import CONTEXT
from tokentrace.api.responses import APIError, json_response

__all__ = ["routes"]

routes = web.RouteTableDef()


def _service(request: web.Request) -> AlertService:
    service = request.app[CONTEXT].alerts
    if service is None:
        raise APIError(404, "alerting is not enabled on this server")
    return service


@routes.get("/alerts")
async def list_alerts(request: web.Request) -> web.Response:
    service = _service(request)
    await service.refresh()
    return json_response(service.list_alerts())


@routes.post("/alerts")
async def create_alert(request: web.Request) -> web.Response:
    try:
        created = await _service(request).create(await request.read())
    except AlertError as exc:
        raise APIError(exc.status, exc.message) from None
    return json_response(created, status=201)


@routes.post("/alerts/{name}/silence")
async def silence_alert(request: web.Request) -> web.Response:
    try:
        silenced = await _service(request).silence(request.match_info["name"], await request.read())
    except AlertError as exc:
        raise APIError(exc.status, exc.message) from None
    return json_response(silenced)


@routes.delete("/alerts/{name}")
async def delete_alert(request: web.Request) -> web.Response:
    try:
        await _service(request).delete(request.match_info["name"])
    except AlertError as exc:
        raise APIError(exc.status, exc.message) from None
    return web.Response(status=204)
