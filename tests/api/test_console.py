"""The console's static files as the server serves them: paths, caching, the token exemption, no other host."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.conftest import MakeClient
from tokentrace.api import console

ROOT = Path(console.__file__).with_name("console")
#: Page weight budget before data: everything the first page load fetches, gzipped.
BUDGET_BYTES = 300 * 1024


@pytest.mark.parametrize("path", ["/", "/console/", "/console/traces", "/console/traces/abc-123", "/console/alerts"])
async def test_pages_answer_the_html_page(client: TestClient[Any, Any], path: str) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "<main" in await response.text()
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp


async def test_files_are_served_gzipped_and_revalidated(client: TestClient[Any, Any]) -> None:
    response = await client.get("/console/assets/app.js", headers={"Accept-Encoding": "gzip"})
    assert response.status == 200 and response.content_type == "text/javascript"
    assert response.headers["Content-Encoding"] == "gzip"
    assert await response.read() == (ROOT / "assets" / "app.js").read_bytes()  # the client inflates it
    again = await client.get("/console/assets/app.js", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status == 304
    css = await client.get("/console/vendor/uplot/uPlot.min.css")
    assert css.content_type == "text/css"


@pytest.mark.parametrize("path", ["/console/assets/missing.js", "/console/vendor/uplot/../../../console.py"])
async def test_missing_files_are_404(client: TestClient[Any, Any], path: str) -> None:
    response = await client.get(path)
    assert response.status == 404
    assert "error" in await response.json()


async def test_files_load_without_the_token_but_data_does_not(make_client: MakeClient) -> None:
    client = await make_client('http_server: {auth_token: "s3cret"}')
    for path in ("/", "/console/traces/x", "/console/assets/app.js", "/console/vendor/uplot/uPlot.iife.min.js"):
        assert (await client.get(path)).status == 200, path
    for path in ("/metrics", "/metrics/series?window=1h&step=5m", "/traces", "/health", "/alerts"):
        assert (await client.get(path)).status == 401, path
    assert (await client.post("/console/assets/app.js")).status == 401  # only reads are exempt
    ok = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200


def _served_files() -> list[Path]:
    return [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css")]


def test_no_file_refers_to_another_host() -> None:
    for path in _served_files():
        text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)  # a licence banner's link is not a fetch
        # uPlot names the SVG namespace; that is an identifier, never fetched.
        urls = set(re.findall(r"(?:https?:)?//[a-zA-Z0-9.-]+\.[a-z]{2,}", text)) - {"http://www.w3.org"}
        assert not urls, (path, urls)
        assert "@import" not in text and "fonts.googleapis" not in text


def test_every_import_and_link_resolves_to_a_packaged_file() -> None:
    index = (ROOT / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="(/console/(?:assets|vendor)/[^"]+)"', index):
        assert (ROOT / ref.removeprefix("/console/")).is_file(), ref
    for path in (ROOT / "assets").glob("*.js"):
        for ref in re.findall(r'(?:from|import\()\s*"(\./[^"]+)"', path.read_text()):
            assert (path.parent / ref).is_file(), (path.name, ref)


def test_page_weight_is_under_budget() -> None:
    total = sum(len(gzip.compress(p.read_bytes(), 9)) for p in _served_files())
    assert total < BUDGET_BYTES, f"{total} bytes gzipped"


def test_vendored_uplot_is_pinned_with_its_licence() -> None:
    vendor = ROOT / "vendor" / "uplot"
    assert "MIT" in (vendor / "LICENSE").read_text()
    readme = (vendor / "README.md").read_text()
    assert re.search(r"Version: 1\.6\.32\b", readme)
    assert "(v1.6.32)" in (vendor / "uPlot.iife.min.js").read_text()[:100]  # the banner of the file shipped
