"""Middlewares: every error becomes the JSON envelope; an optional bearer token guards every route."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from tokentrace.api.responses import APIError, error_response

__all__ = ["auth_middleware", "error_middleware"]

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with ``{"error": ...}``; an unexpected one is logged and answered 500."""
    try:
        return await handler(request)
    except APIError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, f"request body too large: {exc.text}")
    except web.RequestPayloadError as exc:  # e.g. a corrupt gzip body: the client's fault, not ours
        return error_response(400, f"unreadable request body: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"no route for {request.method} {request.path}"
        return error_response(exc.status, message, {k: v for k, v in exc.headers.items() if k == "Allow"})
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal server error (logged on the server)")


def auth_middleware(token: str, public: Callable[[str], bool] = lambda path: False) -> Middleware:
    """Require ``Authorization: Bearer <token>`` on every request (constant-time comparison), except GETs of
    paths ``public`` accepts (the console's static files, which hold no data)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and public(request.path):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise APIError(401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="tokentrace"'})
        return await handler(request)

    return check
