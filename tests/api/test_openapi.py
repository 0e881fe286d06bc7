"""The OpenAPI document: valid OpenAPI 3.1, in step with the routes, the code's names and real responses."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tokentrace.alerting.service import AlertService
from tokentrace.api.app import create_app
from tokentrace.api.context import VERSION, ServerContext
from tokentrace.api.embedded import embedded_settings, price_table
from tokentrace.api.routes import traces as trace_routes
from tokentrace.api.stores.embedded import EmbeddedStore
from tokentrace.config import Config, HTTPServerConfig
from tokentrace.core.alerts.metrics import METRICS as ALERT_METRICS
from tokentrace.core.alerts.reader import MetricReading
from tokentrace.core.metrics import GROUP_METRICS, SCALAR_METRICS, metric_names
from tokentrace.core.span import STATUSES, Span
from tokentrace.core.timefmt import format_ms, now_ms

from .conftest import MakeClient

DOC_URI = "urn:tokentrace:openapi"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
#: Paths served with or without alerting, documented as such.
CONDITIONAL = "x-tokentrace-requires"


def load_document() -> dict[str, Any]:
    """The document as packaged (the file the server serves)."""
    document: dict[str, Any] = yaml.safe_load(files("tokentrace.api").joinpath("openapi.yaml").read_text())
    return document


DOC = load_document()


def documented_operations(*, conditional: bool) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation; ``conditional`` includes paths present only with alerting."""
    out = set()
    for path, item in DOC["paths"].items():
        if CONDITIONAL in item and not conditional:
            continue
        out |= {(method.upper(), path) for method in item if method in METHODS}
    return out


def registered_operations(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route, without aiohttp's implicit HEAD of each GET."""
    routes = {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource}
    return {(m, p) for m, p in routes if not (m == "HEAD" and ("GET", p) in routes)}


def _app(tmp_path: Path, *, alerting: bool) -> web.Application:
    config = Config()
    store = EmbeddedStore(tmp_path / "data", embedded_settings(config))
    ctx = ServerContext(store=store, config=config, pricer=price_table(config))
    if alerting:

        class _NoData:
            def read(self, metric: str, window_s: float, filter: Any, now_ms: int) -> MetricReading:
                return MetricReading(None, 0)

        ctx.alerts = AlertService(_NoData())
    return create_app(ctx)


# ---------------------------------------------------------------------------------------- the document


def test_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1")
    validate(DOC)  # raises OpenAPIValidationError with the path at fault


def test_every_schema_is_a_valid_json_schema() -> None:
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_ref_resolves() -> None:
    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(DOC):
        assert ref.startswith("#/"), ref
        node: Any = DOC
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for item in DOC["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids))


def test_version_matches_the_server() -> None:
    assert DOC["info"]["version"] == VERSION


def test_bearer_auth_is_optional() -> None:
    assert DOC["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": DOC["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert {} in DOC["security"] and {"bearerAuth": []} in DOC["security"]


def test_every_operation_documents_401_and_error_responses_use_the_envelope() -> None:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            # The console's static files hold no data and are served without the token (``security: []``).
            assert "401" in op["responses"] or op.get("security") == [], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400 and not (path == "/health" and status == "503"):
                    assert response["$ref"].startswith("#/components/responses/"), (method, path, status)
    for name, response in DOC["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, name


# ------------------------------------------------------------------------------- in step with the code


@pytest.mark.parametrize("alerting", [False, True], ids=["plain", "alerting"])
def test_routes_and_document_agree(tmp_path: Path, alerting: bool) -> None:
    registered = registered_operations(_app(tmp_path, alerting=alerting))
    documented = documented_operations(conditional=True)
    assert registered - documented == set(), "routes missing from the OpenAPI document"
    assert documented - registered == set(), "documented operations the app does not serve"


def test_alert_paths_are_marked_conditional() -> None:
    marked = {path for path, item in DOC["paths"].items() if CONDITIONAL in item}
    assert marked == {"/alerts", "/alerts/{name}/silence", "/alerts/{name}"}
    assert all(DOC["paths"][p][CONDITIONAL] == "alerting" for p in marked)
    for path in marked:
        for method, op in DOC["paths"][path].items():
            if method in METHODS:
                assert "404" in op["responses"], (method, path)  # the answer without alerting


def test_prometheus_path_is_the_default_config_path() -> None:
    assert HTTPServerConfig().prometheus_path in DOC["paths"]


def test_metric_names_match_the_code() -> None:
    op = DOC["paths"]["/metrics/{name}"]["get"]
    assert DOC["components"]["schemas"]["MetricName"]["enum"] == metric_names()
    assert sorted(op["x-group-metrics"]) == sorted(GROUP_METRICS)
    # A name in both tables answers the group body, so it is listed as a group metric only.
    assert sorted(op["x-scalar-metrics"]) == sorted(set(SCALAR_METRICS) - set(GROUP_METRICS))


def test_span_schema_has_every_field_of_the_span_struct() -> None:
    fields = set(Span.__struct_fields__)
    schemas = DOC["components"]["schemas"]
    assert set(schemas["Span"]["properties"]) == fields
    assert set(schemas["SpanRecord"]["properties"]) == fields
    assert set(schemas["SpanRecord"]["required"]) == fields
    assert schemas["Span"]["required"] == ["model"]
    assert tuple(schemas["Status"]["enum"]) == STATUSES


def test_alert_rule_metrics_match_the_code() -> None:
    assert sorted(DOC["components"]["schemas"]["AlertRule"]["properties"]["metric"]["enum"]) == sorted(ALERT_METRICS)


def test_trace_limits_match_the_code() -> None:
    params = {p["name"]: p for p in DOC["paths"]["/traces"]["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == trace_routes.MAX_LIMIT
    recent = {p["name"]: p for p in DOC["paths"]["/traces/recent"]["get"]["parameters"]}
    assert recent["limit"]["schema"]["maximum"] == trace_routes.MAX_RECENT


# ------------------------------------------------------------------------------ real responses conform

_REGISTRY: Registry[Any] = Registry().with_resource(DOC_URI, Resource(contents=DOC, specification=DRAFT202012))


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def assert_conforms(path: str, method: str, status: int, body: Any) -> None:
    """Validate ``body`` against the documented JSON schema of that response."""
    response = DOC["paths"][path][method]["responses"][str(status)]
    own = "#/" + _pointer("paths", path, method, "responses", str(status))
    where = response.get("$ref", own)
    validator = Draft202012Validator(
        {"$ref": f"{DOC_URI}{where}/content/application~1json/schema"},
        registry=_REGISTRY,
        format_checker=FormatChecker(),
    )
    error = best_match(validator.iter_errors(body))
    assert error is None, f"{method.upper()} {path} {status}: {error.message} at {list(error.absolute_path)}"


def _spans() -> list[dict[str, Any]]:
    start = now_ms() - 120_000
    spans: list[dict[str, Any]] = []
    for i in range(12):
        model, provider = [("gpt-4o", "openai"), ("claude-3-5-haiku-20241022", "anthropic"), ("homebrew", "")][i % 3]
        spans.append(
            {
                "trace_id": f"t{i % 4}",
                "span_id": f"s{i}",
                "parent_span_id": None if i < 4 else f"s{i % 4}",
                "name": f"step-{i}",
                "model": model,
                "provider": provider,
                "prompt_tokens": 100 + i,
                "comp_tokens": 10 * i,
                "latency_ms": 250.5 + 40 * i,
                "status": STATUSES[i % 3],
                "caller": ["api", "bot"][i % 2],
                "started_at": format_ms(start + i * 1000),
                "attributes": {"workflow": ["a", "b"][i % 2], "tier": i % 3, "beta": i % 2 == 0, "eval.score": i / 12},
            }
        )
    return spans


async def test_responses_conform_to_the_document(client: TestClient[Any, Any]) -> None:
    posted = await client.post("/spans", data=msgspec.json.encode(_spans()))
    assert posted.status == 202
    assert_conforms("/spans", "post", 202, await posted.json())
    one = await client.post("/spans", json={"model": "gpt-4o", "total_tokens": 7})
    assert_conforms("/spans", "post", 202, await one.json())

    for query in ("", "?window=24h", "?groupby=model", "?groupby=caller", "?groupby=workflow", "?groupby=tier"):
        response = await client.get(f"/metrics{query}")
        assert response.status == 200, query
        assert_conforms("/metrics", "get", 200, await response.json())
    for name in metric_names():
        for query in ("", "?groupby=provider", "?groupby=workflow&window=90m", "?window=1ms"):
            response = await client.get(f"/metrics/{name}{query}")
            assert response.status == 200, (name, query)
            assert_conforms("/metrics/{name}", "get", 200, await response.json())

    for query in ("window=1h&step=5m", "window=6h&step=30m&groupby=model", "window=24h&step=1h&caller=api"):
        response = await client.get(f"/metrics/series?{query}")
        assert response.status == 200, query
        assert_conforms("/metrics/series", "get", 200, await response.json())

    listing = await client.get("/traces", params={"limit": "2"})
    body = await listing.json()
    assert_conforms("/traces", "get", 200, body)
    assert body["total"] == 5 and len(body["traces"]) == 2
    filtered = await client.get("/traces", params={"attr.workflow": "a", "status": "ok", "model": "gpt-4o"})
    assert_conforms("/traces", "get", 200, await filtered.json())
    recent = await client.get("/traces/recent", params={"limit": "5"})
    assert_conforms("/traces/recent", "get", 200, await recent.json())
    trace = await client.get("/traces/t1")
    assert_conforms("/traces/{trace_id}", "get", 200, await trace.json())
    health = await client.get("/health")
    assert_conforms("/health", "get", 200, await health.json())
    served = await client.get("/openapi.json")
    assert await served.json() == DOC
    text = await client.get("/openapi.yaml")
    assert yaml.safe_load(await text.text()) == DOC


@pytest.mark.parametrize(
    ("method", "url", "body", "path", "status"),
    [
        ("POST", "/spans", b"", "/spans", 400),
        ("POST", "/spans", b"{", "/spans", 400),
        ("POST", "/spans", b'{"total_tokens": 1}', "/spans", 400),
        ("POST", "/spans", b'{"model": "m"}', "/spans", 400),
        ("POST", "/spans", b'{"model": "m", "total_tokens": 1, "started_at": "2001-01-01T00:00:00Z"}', "/spans", 400),
        ("POST", "/spans", msgspec.json.encode([{"model": "m", "total_tokens": 1}] * 1001), "/spans", 413),
        ("GET", "/metrics?window=forever", None, "/metrics", 400),
        ("GET", "/metrics?window=31d", None, "/metrics", 400),
        ("GET", "/metrics/nope", None, "/metrics/{name}", 404),
        ("GET", "/metrics/series?window=1h&step=90s", None, "/metrics/series", 400),
        ("GET", "/traces?limit=201", None, "/traces", 400),
        ("GET", "/traces?status=fine", None, "/traces", 400),
        ("GET", "/traces?since=yesterday", None, "/traces", 400),
        ("GET", "/traces/recent?limit=0", None, "/traces/recent", 400),
        ("GET", "/traces/unknown", None, "/traces/{trace_id}", 404),
    ],
)
async def test_documented_errors_conform(
    client: TestClient[Any, Any], method: str, url: str, body: bytes | None, path: str, status: int
) -> None:
    response = await client.request(method, url, data=body)
    assert response.status == status
    assert response.content_type == "application/json"
    assert_conforms(path, method.lower(), status, await response.json())


ALERTS_YAML = """
alerting: {interval: 24h}
alerts:
  - {name: config-cost, metric: total_cost, op: gt, threshold: 10, window: 1h}
"""


async def test_alert_responses_conform(make_client: MakeClient) -> None:
    client = await make_client(ALERTS_YAML)
    rule = {"name": "p95", "metric": "latency_p95", "op": ">", "threshold": 4000, "window": "30m"}
    rule |= {"cooldown": "1h", "min_spans": 10, "filter": {"model": "gpt-4o"}}
    rule["delivery"] = {"type": "http", "url": "https://hooks.example.com/alerts"}
    calls: list[tuple[str, str, Any, int, str]] = [
        ("post", "/alerts", rule, 201, "/alerts"),
        ("post", "/alerts", rule, 409, "/alerts"),
        ("post", "/alerts", {**rule, "name": "x", "metric": "nope"}, 400, "/alerts"),
        ("post", "/alerts", {**rule, "name": "y", "extra": 1}, 400, "/alerts"),
        ("get", "/alerts", None, 200, "/alerts"),
        ("post", "/alerts/p95/silence", {"duration": "2h"}, 200, "/alerts/{name}/silence"),
        ("post", "/alerts/p95/silence", {"duration": "soon"}, 400, "/alerts/{name}/silence"),
        ("post", "/alerts/nope/silence", {"duration": 60}, 404, "/alerts/{name}/silence"),
        ("get", "/alerts", None, 200, "/alerts"),
        ("delete", "/alerts/config-cost", None, 409, "/alerts/{name}"),
        ("delete", "/alerts/p95", None, 204, "/alerts/{name}"),
        ("delete", "/alerts/p95", None, 404, "/alerts/{name}"),
    ]
    for method, url, body, status, path in calls:
        response = await client.request(method, url, json=body)
        assert response.status == status, (method, url, await response.text())
        if status != 204:
            assert_conforms(path, method, status, await response.json())
    listed = await (await client.get("/alerts")).json()
    assert [a["name"] for a in listed] == ["config-cost"]


async def test_alerts_without_alerting_answer_404(aiohttp_client: Any, tmp_path: Path) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(_app(tmp_path, alerting=False))
    for method, url, path in [
        ("get", "/alerts", "/alerts"),
        ("post", "/alerts", "/alerts"),
        ("post", "/alerts/x/silence", "/alerts/{name}/silence"),
        ("delete", "/alerts/x", "/alerts/{name}"),
    ]:
        response = await client.request(method, url, json={})
        assert response.status == 404, (method, url)
        assert_conforms(path, method, 404, await response.json())


async def test_unauthorized_conforms(make_client: MakeClient) -> None:
    client = await make_client('http_server: {auth_token: "s3cret"}')
    response = await client.get("/metrics")
    assert response.status == 401
    assert re.fullmatch(r'Bearer realm=".+"', response.headers["WWW-Authenticate"])
    assert_conforms("/metrics", "get", 401, await response.json())
    ok = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
