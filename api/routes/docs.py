"""``GET /openapi.yaml`` and ``GET /openapi.json``: the API's OpenAPI 3.1 document."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import yaml
from aiohttp import web

from tokentrace.api.responses import json_response

__all__ = ["openapi_document", "routes"]

routes = web.RouteTableDef()


@cache
def _text() -> str:
    return files("tokentrace.api").joinpath("openapi.yaml").read_text()


@cache
def openapi_document() -> dict[str, Any]:
    """The parsed OpenAPI document."""
    document: dict[str, Any] = yaml.safe_load(_text())
    return document


@routes.get("/openapi.yaml")
async def openapi_yaml(request: web.Request) -> web.Response:
    return web.Response(text=_text(), content_type="application/yaml")


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi_document())
