"""Rule validation: every bad field is rejected with a message that starts with the field's name."""

from __future__ import annotations

import math

import msgspec
import pytest

from tokentrace.core.alerts import (
    METRICS,
    AlertRule,
    InvalidRule,
    WebhookDelivery,
    decode_rule,
    encode_rule,
    rules_from_config,
)
from tokentrace.core.alerts.metrics import READER_METRICS, canonical_metric

BASE = {"name": "cost-spike", "metric": "total_cost", "op": "gt", "threshold": 5.0, "window": "1h"}


def body(**changes: object) -> bytes:
    data = {**BASE, **changes}
    return msgspec.json.encode({k: v for k, v in data.items() if v is not ...})


def test_spec_004_example_decodes() -> None:
    rule = decode_rule(
        b'{"name": "model-latency-alert", "metric": "latency_p95", "op": "gt", "threshold": 4000,'
        b' "window": "30m", "cooldown": "1h", "min_spans": 10, "filter": {"model": "gpt-4o"},'
        b' "delivery": {"type": "http", "url": "https://hooks.example.com/alerts"}}'
    )
    assert rule.threshold == 4000.0 and isinstance(rule.threshold, float)
    assert rule.window_s == 1800 and rule.cooldown_s(300) == 3600
    assert rule.filter == {"model": "gpt-4o"} and rule.min_spans == 10 and rule.level == "warning"
    assert rule.delivery == WebhookDelivery(url="https://hooks.example.com/alerts")


@pytest.mark.parametrize(
    ("given", "canonical"),
    [(">", "gt"), (">=", "gte"), ("<", "lt"), ("<=", "lte"), ("==", "eq"), ("lte", "lte")],
)
def test_op_aliases_normalise(given: str, canonical: str) -> None:
    assert decode_rule(body(op=given)).op == canonical


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_every_metric_maps_to_a_reader_metric(metric: str) -> None:
    threshold = 0.5 if "rate" in metric else 5.0
    rule = decode_rule(body(metric=metric, threshold=threshold))
    assert rule.metric == metric
    assert rule.reader_metric in READER_METRICS


def test_seed_001_names_are_aliases() -> None:
    assert canonical_metric("latency_p99_ms") == "latency_p99"
    assert canonical_metric("total_spans") == "span_count"
    assert canonical_metric("total_cost_usd") == "total_cost"
    with pytest.raises(KeyError):
        canonical_metric("cost")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"metric": "cost"}, "metric:"),
        ({"op": "!="}, "op:"),
        ({"threshold": "5"}, "threshold:"),
        ({"threshold": True}, "threshold:"),
        ({"threshold": ...}, "threshold:"),
        ({"metric": "error_rate", "threshold": 5}, "threshold:"),
        ({"window": "1 hour"}, "window:"),
        ({"window": "0s"}, "window:"),
        ({"window": -3}, "window:"),
        ({"cooldown": "soon"}, "cooldown:"),
        ({"min_spans": -1}, "min_spans:"),
        ({"min_spans": 1.5}, "min_spans:"),
        ({"level": "info"}, "level:"),
        ({"filter": {"model": 4}}, "filter"),
        ({"filter": {"model": "gpt-4o", "tier": "gold", "workflow": "x"}}, "filter:"),
        ({"name": "has space"}, "name:"),
        ({"name": "a/b"}, "name:"),
        ({"name": ...}, "name:"),
        ({"colour": "red"}, "colour:"),
        ({"delivery": {"type": "sms"}}, "delivery.type:"),
        ({"delivery": {"type": "http"}}, "delivery.url:"),
        ({"delivery": {"type": "http", "url": "hooks.example.com"}}, "delivery.url:"),
        ({"delivery": {"type": "http", "url": "http://h", "timeout": "x"}}, "delivery.timeout:"),
        ({"delivery": {"type": "http", "url": "http://h", "max_retries": 99}}, "delivery.max_retries:"),
        ({"delivery": {"type": "http", "url": "http://h", "secret": ""}}, "delivery.secret:"),
        ({"delivery": {"type": "alertmanager", "url": "ftp://am"}}, "delivery.url:"),
        (
            {"delivery": {"type": "alertmanager", "url": "http://am", "generator_url": "x"}},
            "delivery.generator_url:",
        ),
    ],
)
def test_invalid_field_is_named(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRule) as caught:
        decode_rule(body(**changes))
    assert str(caught.value).startswith(field), str(caught.value)


def test_malformed_json_and_non_object() -> None:
    with pytest.raises(InvalidRule, match="malformed JSON"):
        decode_rule(b'{"name": ')
    with pytest.raises(InvalidRule, match="object"):
        decode_rule(b"[]")


def test_code_construction_validates_and_normalises() -> None:
    rule = AlertRule("hourly-cost-spike", "total_cost", ">", 5, window=3600, cooldown=90.5)
    assert (rule.op, rule.threshold, rule.window, rule.cooldown) == ("gt", 5.0, "1h", "90500ms")
    with pytest.raises(ValueError, match=r"^threshold:"):
        AlertRule("x", "total_cost", "gt", math.inf)
    with pytest.raises(ValueError, match=r"^op:"):
        AlertRule("x", "total_cost", "greater", 1)


def test_config_rules_seed_style_without_names() -> None:
    rules = rules_from_config(
        [
            {"metric": "error_rate", "op": ">", "threshold": 0.05, "level": "warning"},
            {"metric": "latency_p99", "op": ">", "threshold": 5000, "level": "critical"},
            {
                "name": "gold",
                "metric": "span_count",
                "op": "<",
                "threshold": 1,
                "filter": {"tier": 1, "model": "gpt-4o"},
            },
            {"name": "beta", "metric": "span_count", "op": "<", "threshold": 1, "filter": {"beta": True}},
        ]
    )
    assert [r.name for r in rules] == ["error_rate_gt_0.05", "latency_p99_gt_5000", "gold", "beta"]
    assert rules[1].level == "critical"
    assert rules[2].filter == {"tier": "1", "model": "gpt-4o"} and rules[3].filter == {"beta": "true"}


def test_config_errors_name_item_and_field() -> None:
    with pytest.raises(InvalidRule, match=r"^alerts\[1\]\.window:"):
        rules_from_config([BASE, {**BASE, "name": "b", "window": "forever"}])
    with pytest.raises(InvalidRule, match=r"^alerts\[0\]:"):
        rules_from_config(["total_cost > 5"])


def test_encode_round_trips() -> None:
    rule = decode_rule(body(cooldown="10m", delivery={"type": "http", "url": "http://h/x", "secret": "s3"}))
    assert decode_rule(msgspec.json.encode(encode_rule(rule))) == rule
    assert "cooldown" not in encode_rule(decode_rule(body()))


def test_secret_not_in_repr() -> None:
    assert "s3cret" not in repr(WebhookDelivery(url="http://h", secret="s3cret"))
