"""``dashboards/prometheus-rules.yml``: ``promtool check rules`` and its ``promtool test rules`` suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.dashboards.expressions import RULES
from tests.dashboards.prometheus import promtool

TESTS = RULES.with_name("prometheus-rules.test.yml")


def test_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 12 rules found" in checked.stdout


def test_rule_unit_tests_pass() -> None:
    tested = promtool("test", "rules", str(TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        case["alertname"] for t in yaml.safe_load(TESTS.read_text())["tests"] for case in t.get("alert_rule_test", [])
    }
    assert (
        alerts
        == tested
        == {
            "TokentraceCostSpike",
            "TokentraceHighLatencyP95",
            "TokentraceHighErrorRatio",
            "TokentraceQualityDrop",
        }
    )


def test_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The suite can fail: with the quality threshold at 0.7 the expected QualityDrop never fires."""
    shutil.copy(TESTS, tmp_path / TESTS.name)
    text = RULES.read_text()
    assert "tokentrace_quality_score) < 0.75" in text
    (tmp_path / RULES.name).write_text(
        text.replace("tokentrace_quality_score) < 0.75", "tokentrace_quality_score) < 0.7")
    )
    tested = promtool("test", "rules", str(tmp_path / TESTS.name))
    assert tested.returncode != 0
    assert "TokentraceQualityDrop" in tested.stdout + tested.stderr


def test_broken_rules_fail_promtool_check(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yml"
    broken.write_text(
        RULES.read_text().replace("sum by (model) (rate(tokentrace_cost_total[5m]))", "sum by (model (", 1)
    )
    assert promtool("check", "rules", str(broken)).returncode != 0
