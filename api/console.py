"""The web console: static files served by the API process itself, the same on ``serve`` and ``api`` replicas.

The console is plain ES modules plus a vendored uPlot, shipped as package data under ``console/``; it reads
the same JSON endpoints users do. ``/`` and every page path under ``/console/`` answer the one HTML page (the
browser routes between pages, so reloading a deep link such as a trace shows the same trace); files under
``/console/assets/`` and ``/console/vendor/`` are served from memory, gzipped once, revalidated by ETag.
These paths carry no data, so they load without the bearer token; the data endpoints still need it.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tokentrace.api.responses import APIError

__all__ = ["PREFIX", "is_console_path", "routes"]

PREFIX = "/console/"
ROOT = Path(__file__).with_name("console")
#: Page paths are answered with the HTML page; everything else under the prefix is a file or a 404.
_FILE_FOLDERS = ("assets/", "vendor/")
#: Same-origin only: no script, style, font or request to any other host, even if a file asked for one.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".md": "text/markdown"}

routes = web.RouteTableDef()


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


def _load(path: Path) -> _Asset:
    body = path.read_bytes()
    content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return _Asset(body, gzip.compress(body, 9, mtime=0), content_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')


def _assets() -> dict[str, _Asset]:
    files = {p.relative_to(ROOT).as_posix(): p for p in ROOT.rglob("*") if p.is_file()}
    return {name: _load(path) for name, path in files.items() if name == "index.html" or name.startswith(_FILE_FOLDERS)}


_ASSETS = _assets()


def is_console_path(path: str) -> bool:
    """Whether ``path`` is the console's (static, no data: served without the bearer token)."""
    return path == "/" or path.startswith(PREFIX)


def _serve(request: web.Request, asset: _Asset) -> web.Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if asset.content_type == "text/html":
        headers["Content-Security-Policy"] = _CSP
        headers["Referrer-Policy"] = "no-referrer"
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("Accept-Encoding", "") and len(asset.gzipped) < len(body):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
    content_type = asset.content_type + ("; charset=utf-8" if asset.content_type.startswith("text/") else "")
    headers["Content-Type"] = content_type
    return web.Response(body=body, headers=headers)


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return _serve(request, _ASSETS["index.html"])


@routes.get(PREFIX + "{path:.*}")
async def console(request: web.Request) -> web.Response:
    tail = request.match_info["path"]
    if tail.startswith(_FILE_FOLDERS):
        asset = _ASSETS.get(tail)
        if asset is None:
            raise APIError(404, f"no console file {tail!r}")
        return _serve(request, asset)
    return _serve(request, _ASSETS["index.html"])
