"""JSON responses and the error envelope ``{"error": "..."}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tokentrace.core.codec import encode_json

__all__ = ["APIError", "error_response", "json_response"]


class APIError(Exception):
    """Raised by a handler to answer ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response encoded with msgspec (spans and structs encode directly)."""
    return web.Response(body=encode_json(body), status=status, content_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response({"error": message}, status)
    response.headers.update(headers or {})
    return response
