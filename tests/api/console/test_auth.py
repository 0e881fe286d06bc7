"""With ``http_server.auth_token`` set: the console's files load, no data shows until the token is typed."""

from __future__ import annotations

from typing import Any

from tests.api.console.conftest import get_json, watch
from tests.api.server_process import ServerProcess


def test_token_prompt(browser_context: Any, auth_server: ServerProcess) -> None:
    console = watch(browser_context, auth_server.url)
    page = console.page
    # The data requests before a token is typed, and the one the wrong token makes, answer 401 by design.
    for path in ("/metrics", "/health", "/traces"):
        console.expect_status(401, path)
    page.goto(f"{auth_server.url}/?window=1h")
    page.wait_for_selector("#auth:not([hidden])")
    assert page.locator("#main").is_hidden()
    assert page.locator('[data-figure="Spans"]').count() == 0
    assert page.locator("#auth-token").get_attribute("type") == "password"
    console.shot("token-prompt")

    page.fill("#auth-token", "not-the-token")
    page.press("#auth-token", "Enter")
    page.wait_for_function("() => document.querySelector('#auth-error').textContent.includes('Wrong token')")
    assert page.locator("#main").is_hidden()
    assert page.evaluate("sessionStorage.getItem('tokentrace.token')") is None

    page.fill("#auth-token", "s3cret-token")
    page.press("#auth-token", "Enter")
    page.wait_for_selector('[data-figure="Spans"]')
    spans = get_json(f"{auth_server.url}/metrics?window=1h", token="s3cret-token")["span_count"]
    assert int(page.locator('[data-figure="Spans"]').inner_text().replace(",", "")) == spans
    assert page.locator("#auth").is_hidden()
    # Kept for the session: another page loads its data without asking again.
    page.goto(f"{auth_server.url}/console/traces")
    page.wait_for_selector("#trace-list table")
    assert page.locator("#auth").is_hidden()
    problems = list(console.problems)
    page.close()
    assert problems == []
