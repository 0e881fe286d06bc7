"""Each console page renders the server's real data in a real browser, and its controls work."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.api.console.conftest import Watched, get_json, make_spans, post_json, serve, watch
from tests.api.server_process import ServerProcess
from tokentrace.core.timefmt import now_ms


def _figure(console: Watched, name: str) -> str:
    return str(console.page.locator(f'[data-figure="{name}"]').inner_text())


def _int(text: str) -> int:
    return int(re.sub(r"[^\d]", "", text))


def test_overview_shows_the_numbers_of_get_metrics_and_charts_them(console: Watched, server: ServerProcess) -> None:
    page = console.page
    page.goto(f"{server.url}/?window=6h&groupby=model")
    page.wait_for_selector('[data-figure="Spans"]')
    metrics = get_json(f"{server.url}/metrics?window=6h")
    assert _int(_figure(console, "Spans")) == metrics["span_count"] == len(server.spans)  # type: ignore[attr-defined]
    assert _figure(console, "Total cost") == f"${metrics['cost']['total_usd']:,.2f}"
    assert _int(_figure(console, "Tokens in")) == metrics["tokens"]["prompt_total"]
    assert _int(_figure(console, "Tokens out")) == metrics["tokens"]["completion_total"]
    assert _figure(console, "Error rate") == f"{metrics['errors']['rate'] * 100:.2f} %"
    assert _figure(console, "Quality avg") == f"{metrics['quality']['score_avg']:.3f}"
    # Five charts drawn by uPlot; the grouped ones have one legend entry per model.
    page.wait_for_selector("#chart-quality canvas")
    assert page.locator(".uplot").count() == 5
    legend = page.locator("#chart-cost .u-legend").inner_text()
    for model in get_json(f"{server.url}/metrics?window=6h&groupby=model")["by_model"]:
        assert model in legend
    assert {"p50", "p95", "p99"} <= set(re.findall(r"p\d\d", page.locator("#chart-latency .u-legend").inner_text()))
    assert "threshold" in page.locator("#chart-quality .u-legend").inner_text()
    console.shot("overview")

    # Another window: the figures follow it, and the URL keeps the choice.
    page.select_option("select[name=window]", "15m")
    page.wait_for_url(re.compile(r"window=15m"))
    recent = get_json(f"{server.url}/metrics?window=15m")["span_count"]
    page.wait_for_function(
        "n => document.querySelector('[data-figure=Spans]').textContent.replace(/[^0-9]/g, '') === String(n)",
        arg=recent,
    )
    # Group by an attribute key the data has (found on recent spans).
    page.wait_for_selector("select[name=groupby] option[value=variant]", state="attached")
    page.select_option("select[name=groupby]", "variant")
    page.wait_for_function("() => document.querySelector('#chart-calls .u-legend').textContent.includes('b')")
    assert "groupby=variant" in page.url
    # The choices are the window's dimensions: `cohort` only on spans older than 3h (none of the newest 100).
    page.select_option("select[name=window]", "6h")
    page.wait_for_selector("select[name=groupby] option[value=cohort]", state="attached")
    dimensions = get_json(f"{server.url}/metrics/dimensions?window=6h")["dimensions"]
    assert "cohort" in dimensions and "variant" in dimensions
    assert page.locator("select[name=groupby] option").evaluate_all("os => os.map(o => o.value)") == dimensions
    page.select_option("select[name=window]", "1h")
    page.wait_for_selector("select[name=groupby] option[value=cohort]", state="detached")
    # Auto-refresh pauses.
    page.uncheck("input[name=auto]")
    page.wait_for_url(re.compile(r"refresh=off"))


def test_traces_list_filters_and_pages(console: Watched, server: ServerProcess) -> None:
    page = console.page
    page.goto(f"{server.url}/console/traces")
    page.wait_for_selector("#trace-list table")
    listing = get_json(f"{server.url}/traces?limit=50")
    rows = page.locator("#trace-list tbody tr")
    assert rows.count() == 50
    assert rows.first.locator("td").first.inner_text() == listing["traces"][0]["name"]
    assert f"of {listing['total']}" in page.locator(".pager").inner_text()
    console.shot("traces")

    page.select_option("select[name=status]", "error")
    page.fill("input[name=attrs]", "variant=b")
    page.click("button:has-text('Apply')")
    page.wait_for_url(re.compile(r"status=error"))
    page.wait_for_selector("#trace-list table, #trace-list .message")
    wanted = get_json(f"{server.url}/traces?status=error&attr.variant=b&limit=50")
    assert "attr.variant=b" in page.url
    assert page.locator("#trace-list tbody tr").count() == len(wanted["traces"]) > 0
    statuses = {t.strip() for t in page.locator("#trace-list tbody td.status").all_inner_texts()}
    assert statuses == {"error"}

    page.goto(f"{server.url}/console/traces?offset=50")
    page.wait_for_selector("#trace-list table")
    second = get_json(f"{server.url}/traces?limit=50&offset=50")
    assert page.locator("#trace-list tbody tr").first.locator("td").first.inner_text() == second["traces"][0]["name"]
    page.click("a[rel=prev]")
    page.wait_for_url(re.compile(r"/console/traces$"))


def test_trace_waterfall_nests_children_under_parents_and_survives_a_reload(
    console: Watched, server: ServerProcess
) -> None:
    page = console.page
    trace = get_json(f"{server.url}/traces/trace-007")
    page.goto(f"{server.url}/console/traces")
    page.wait_for_selector("#trace-list table")
    page.goto(f"{server.url}/console/traces/{quote('trace-007')}")
    page.wait_for_selector(".wf-row")
    for attempt in range(2):  # as opened, then reloaded from its URL
        rows = page.locator(".wf-row")
        assert rows.count() == len(trace["spans"]) == 5
        order = [rows.nth(i).get_attribute("data-span-id") for i in range(rows.count())]
        depth = {
            rows.nth(i).get_attribute("data-span-id"): int(rows.nth(i).get_attribute("data-depth") or 0)
            for i in range(rows.count())
        }
        for span in trace["spans"]:
            parent = span["parent_span_id"]
            if parent is None:
                assert depth[span["span_id"]] == 0
            else:
                assert depth[span["span_id"]] == depth[parent] + 1
                assert order.index(span["span_id"]) > order.index(parent)
        assert depth["s4"] == 2  # the tool call, under the retrieve step, under the root
        steps = [s for s in trace["spans"] if s["parent_span_id"]]  # the root spans the whole trace
        slowest = max(steps, key=lambda s: s["latency_ms"])
        priciest = max(steps, key=lambda s: s["cost_usd"])
        assert "slowest" in page.locator(f'.wf-row[data-span-id="{slowest["span_id"]}"]').inner_text()
        assert "most expensive" in page.locator(f'.wf-row[data-span-id="{priciest["span_id"]}"]').inner_text()
        assert page.locator(".tag").count() == 2
        for span in trace["spans"]:
            bar = page.locator(f'.wf-row[data-span-id="{span["span_id"]}"] .wf-bar')
            assert f"status-{span['status']}" in (bar.get_attribute("class") or "")
        if attempt == 0:
            console.shot("trace")
            page.reload()
            page.wait_for_selector(".wf-row")
    # A row opens the span's details: tokens, cost and attributes.
    tool = page.locator('.wf-row[data-span-id="s4"]')
    tool.focus()
    page.keyboard.press("Enter")
    detail = page.locator(f"#{tool.get_attribute('aria-controls')}")
    assert detail.is_visible()
    text = detail.inner_text()
    span = next(s for s in trace["spans"] if s["span_id"] == "s4")
    assert f"{span['prompt_tokens']:,} in" in text and "variant" in text and span["model"] in text


def test_unknown_trace_says_so(console: Watched, server: ServerProcess) -> None:
    console.expect_status(404, "/traces/no-such-trace")
    console.page.goto(f"{server.url}/console/traces/no-such-trace")
    console.page.wait_for_selector("#trace-body .message.error")
    assert "not found" in console.page.locator("#trace-body").inner_text()


def test_alert_created_silenced_and_deleted_through_the_form(console: Watched, server: ServerProcess) -> None:
    page = console.page
    console.expect_status(400, "/alerts")
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{server.url}/console/alerts")
    page.wait_for_selector('tr[data-rule="config-cost"]')
    assert "read-only" in page.locator('tr[data-rule="config-cost"]').inner_text()
    assert page.locator('tr[data-rule="config-cost"] button').count() == 0

    # The API's validation error is shown next to the field it names.
    page.fill("input[name=name]", "ui-errors")
    page.select_option("select[name=metric]", "error_rate")
    page.fill("input[name=threshold]", "3")
    page.click("button:has-text('Create rule')")
    page.wait_for_function("() => document.querySelector('#error-threshold').textContent.length > 0")
    assert "threshold" in page.locator("#error-threshold").inner_text()
    assert page.locator("#error-name").inner_text() == ""
    assert [a["name"] for a in get_json(f"{server.url}/alerts")] == ["config-cost"]

    page.fill("input[name=threshold]", "0.5")
    page.fill("input[name=window]", "15m")
    page.fill("input[name=filter]", "model=gpt-4o")
    page.click("button:has-text('Create rule')")
    row = page.locator('tr[data-rule="ui-errors"]')
    row.wait_for()
    created = next(a for a in get_json(f"{server.url}/alerts") if a["name"] == "ui-errors")
    assert (created["metric"], created["op"], created["threshold"], created["window"]) == (
        "error_rate",
        "gt",
        0.5,
        "15m",
    )
    assert created["filter"] == {"model": "gpt-4o"} and created["source"] == "api"
    assert page.locator("#error-threshold").inner_text() == ""
    console.shot("alerts")

    row.locator("select[name=duration]").select_option("4h")
    row.locator("button:has-text('Silence')").click()
    page.wait_for_selector('tr[data-rule="ui-errors"] td[data-state="silenced"]')
    assert next(a for a in get_json(f"{server.url}/alerts") if a["name"] == "ui-errors")["silenced"] is True

    page.locator('tr[data-rule="ui-errors"] button:has-text("Delete")').click()
    page.wait_for_selector('tr[data-rule="ui-errors"]', state="detached")
    assert [a["name"] for a in get_json(f"{server.url}/alerts")] == ["config-cost"]


def test_compare_marks_the_best_value_of_each_row(console: Watched, server: ServerProcess) -> None:
    page = console.page
    page.goto(f"{server.url}/console/compare?window=6h&groupby=variant")
    page.wait_for_selector("#compare-table table")
    page.wait_for_selector("select[name=groupby] option[value=cohort]", state="attached")  # seen only early
    body = get_json(f"{server.url}/metrics?window=6h&groupby=variant")["by_variant"]
    headers = page.locator("#compare-table thead th").all_inner_texts()[1:]
    assert headers == sorted(body)
    cost_row = page.locator("#compare-table tbody tr", has_text="Cost per call")
    cells = cost_row.locator("td")
    best = min(body, key=lambda v: body[v]["cost"]["per_call_usd"])
    assert "best" in (cells.nth(headers.index(best)).get_attribute("class") or "")
    assert cost_row.locator("td.best").count() == 1
    calls = page.locator("#compare-table tbody tr", has_text="Calls").locator("td").all_inner_texts()
    assert [int(c.replace(",", "")) for c in calls] == [body[v]["span_count"] for v in headers]
    console.shot("compare")
    # A subset of groups: only the ticked ones are compared.
    page.uncheck("input[name=only][value=a]")
    page.wait_for_url(re.compile(r"only=b"))
    page.wait_for_function("() => document.querySelectorAll('#compare-table thead th').length === 2")


def test_health_strip_and_page(console: Watched, server: ServerProcess) -> None:
    page = console.page
    page.goto(f"{server.url}/console/health")
    health = get_json(f"{server.url}/health")
    page.wait_for_selector("#health-body table")
    strip = page.locator("#health-strip")
    page.wait_for_function("() => document.querySelector('#health-strip').textContent.includes('spans/s')")
    assert f"v{health['version']}" in strip.inner_text() and "embedded" in strip.inner_text()
    assert "Spans accepted" in page.locator("#health-body").inner_text()


def test_keyboard_reaches_every_page(console: Watched, server: ServerProcess) -> None:
    page = console.page
    page.goto(f"{server.url}/")
    page.wait_for_selector('[data-figure="Spans"]')
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    labels = []
    for _ in range(6):
        page.keyboard.press("Tab")
        labels.append(page.evaluate("document.activeElement.textContent.trim()"))
    assert labels[1:] == ["Overview", "Compare", "Traces", "Alerts", "Health"]
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")  # Traces
    page.wait_for_url(re.compile(r"/console/traces$"))
    page.wait_for_selector("#trace-list table")
    assert page.locator('nav a[aria-current="page"]').inner_text() == "Traces"


def test_numbers_are_right_aligned(console: Watched, server: ServerProcess) -> None:
    page = console.page
    page.goto(f"{server.url}/console/traces")
    page.wait_for_selector("#trace-list table")
    aligns: Any = page.eval_on_selector_all(
        "#trace-list td.num", "cells => cells.map(c => getComputedStyle(c).textAlign)"
    )
    assert aligns and set(aligns) == {"right"}


def test_overview_on_aserver_with_five_minute_buckets(browser_context: Any, tmp_path: Path) -> None:
    """The chart steps are minutes; where a bucket is 5m the console learns it from the API's 400 and rounds up."""
    server = serve(tmp_path / "coarse", "aggregation: {bucket: 5m}\n")
    try:
        post_json(f"{server.url}/spans", make_spans(now_ms())[:100])
        console = watch(browser_context, server.url)
        console.expect_status(400, "/metrics/series")
        page = console.page
        page.goto(f"{server.url}/?window=1h")
        page.wait_for_selector("#chart-quality canvas")
        spans = get_json(f"{server.url}/metrics?window=1h")["span_count"]
        assert _int(_figure(console, "Spans")) == spans
        assert page.locator(".uplot").count() == 5
        problems = list(console.problems)
        page.close()
        assert problems == []
    finally:
        server.stop()


#: WCAG 2.1 contrast of every visible text node against the background it is drawn on (uPlot's canvas
#: axis labels are drawn, not text, and are not covered).
CONTRAST = """() => {
  const parse = (c) => { const p = c.match(/rgba?\\(([^)]+)\\)/)[1].split(',').map(Number); return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; };
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = (c) => 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b);
  const background = (el) => {
    const label = el.closest('.wf-bar-text.inside');
    if (label) return parse(getComputedStyle(label.previousElementSibling).backgroundColor);
    for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor); if (c.a > 0.5) return c; }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const bad = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const el = node.parentElement;
    if (!node.textContent.trim() || !el.getClientRects().length || el.closest('[hidden], .sr, .skip, option')) continue;
    const style = getComputedStyle(el);
    const a = lum(parse(style.color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    if (ratio < (size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5)) bad.push(`${node.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)}`);
  }
  return bad;
}"""


def test_text_contrast_meets_wcag_aa(console: Watched, server: ServerProcess) -> None:
    page = console.page
    for path, ready in [
        ("/?window=6h", "#chart-quality canvas"),
        ("/console/compare?window=6h&groupby=variant", "#compare-table table"),
        ("/console/traces", "#trace-list table"),
        ("/console/traces/trace-003", ".wf-row"),
        ("/console/alerts", "#alert-list table"),
        ("/console/health", "#health-body table"),
    ]:
        page.goto(f"{server.url}{path}")
        page.wait_for_selector(ready)
        assert page.evaluate(CONTRAST) == [], path


def test_markup_in_span_data_is_shown_as_text(browser_context: Any, tmp_path: Path) -> None:
    """Names, models and attribute values are data: they never become markup (and CSP forbids inline script)."""
    server = serve(tmp_path / "hostile", "")
    hostile = '<img src=x onerror="document.title=1">'
    try:
        span = {"trace_id": "hostile", "span_id": "a", "name": hostile, "model": "m<b>x</b>", "total_tokens": 3}
        span["attributes"] = {"variant": hostile}
        post_json(f"{server.url}/spans", [span])
        console = watch(browser_context, server.url)
        page = console.page
        for path, ready in [
            ("/console/traces", "#trace-list table"),
            ("/console/traces/hostile", ".wf-row"),
            ("/?window=15m&groupby=variant", "#chart-calls .u-legend"),
            ("/console/compare?window=15m&groupby=variant", "#compare-table table"),
        ]:
            page.goto(f"{server.url}{path}")
            page.wait_for_selector(ready)
            assert page.locator("main img, main b").count() == 0, path
        page.goto(f"{server.url}/console/traces/hostile")
        page.click(".wf-row")
        assert hostile in page.locator(".span-detail").inner_text()
        problems = list(console.problems)
        page.close()
        assert problems == []
    finally:
        server.stop()


def test_traces_filter_by_model_caller_and_time_range(console: Watched, server: ServerProcess) -> None:
    page = console.page
    page.goto(f"{server.url}/console/traces")
    page.wait_for_selector("#trace-list table")
    since = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    until = since + timedelta(minutes=90)
    page.fill("input[name=model]", "gpt-4o")
    page.fill("input[name=caller]", "web")
    # The browser runs in UTC (see conftest), so the local times typed are UTC.
    page.fill("input[name=since]", since.strftime("%Y-%m-%dT%H:%M"))
    page.fill("input[name=until]", until.strftime("%Y-%m-%dT%H:%M"))
    page.click("button:has-text('Apply')")
    page.wait_for_url(re.compile(r"until="))
    page.wait_for_selector("#trace-list table, #trace-list .message")
    iso = {k: v.strftime("%Y-%m-%dT%H:%M:%S.000Z") for k, v in (("since", since), ("until", until))}
    assert all(f"{k}={quote(v, safe='')}" in page.url for k, v in iso.items()), page.url
    wanted = get_json(f"{server.url}/traces?model=gpt-4o&caller=web&since={iso['since']}&until={iso['until']}&limit=50")
    assert wanted["total"] > 0
    assert page.locator("#trace-list tbody tr").count() == len(wanted["traces"])
    assert f"of {wanted['total']}" in page.locator(".pager").inner_text()
    # The form shows the filters it applied after the reload.
    assert page.input_value("input[name=since]") == since.strftime("%Y-%m-%dT%H:%M")


def test_the_ingest_rate_shows_within_seconds_and_never_a_stuck_placeholder(
    console: Watched, server: ServerProcess
) -> None:
    page = console.page
    # Every text the header's ingest figure ever shows, with its tooltip, from the first paint on.
    page.add_init_script(
        """
        window.__ingest = [];
        new MutationObserver(() => {
          const el = document.getElementById("ingest-rate");
          if (el) window.__ingest.push([el.textContent, el.title]);
        }).observe(document, { subtree: true, childList: true, characterData: true });
        """
    )
    page.goto(f"{server.url}/console/traces")
    page.wait_for_function(
        "() => /spans\\/s/.test((document.getElementById('ingest-rate') || {}).textContent || '')", timeout=5_000
    )
    seen = page.evaluate("() => window.__ingest")
    assert seen, "the ingest figure was never drawn"
    for text, title in seen:
        assert re.fullmatch(r"ingest (—|\d+\.\d spans/s)", text.strip()), text
        assert title, f"{text!r} has no tooltip"
    assert "spans/s" in seen[-1][0] and "per second" in seen[-1][1]
