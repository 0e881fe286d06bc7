"""Every PromQL expression of ``dashboards/``: dashboard targets, variable queries and rules.

Each comes with the labels its series must carry: the ``{{label}}`` names of a target's legend, the
level of a recording rule's name (``model_le:…`` → model and le) and the ``$labels.x`` an alert's
annotations use. :func:`operands` splits an expression at its top-level comparisons and set operators
(``a > 3 * b and c > 1`` → ``a``, ``3 * b``, ``c``), the parts that must return data even when the whole
condition is (rightly) empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DASHBOARD",
    "RULES",
    "Expression",
    "LabelValues",
    "dashboard_expressions",
    "label_values_queries",
    "operands",
    "rule_expressions",
    "substitute",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "grafana.json"
RULES = ROOT / "dashboards" / "prometheus-rules.yml"

#: Grafana's variables as the test's Prometheus sees them: "All" is ``.*`` and intervals span a few scrapes.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "5m",
    "$model": ".*",
    "$provider": ".*",
    "$caller": ".*",
}
#: Offsets reach back before the test's Prometheus existed; 2s keeps the syntax and finds data.
_OFFSET = re.compile(r"\boffset\s+\d+[smhdwy]\b")
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ANNOTATION_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")
_NUMBER = re.compile(r"[0-9.eE+-]+")
_OPERATORS = (">=", "<=", "==", "!=", ">", "<")
_SET_OPERATORS = ("and", "or", "unless")


@dataclass(frozen=True)
class Expression:
    """One PromQL expression of a dashboard or rules file, and the labels its series must have."""

    where: str
    expr: str
    labels: frozenset[str]
    #: Recording rules: the exact label set of the result (None: only ``labels`` must be present).
    exact: bool = False


@dataclass(frozen=True)
class LabelValues:
    """A Grafana ``label_values(metric, label)`` variable query."""

    variable: str
    metric: str
    label: str


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_expressions(path: Path = DASHBOARD) -> list[Expression]:
    """The ``expr`` of every target of every panel, labelled by panel title and refId."""
    data = json.loads(path.read_text())
    found = []
    for panel in _panels(data["panels"]):
        for target in panel.get("targets", []):
            if "expr" in target:
                labels = frozenset(_LEGEND_LABEL.findall(target.get("legendFormat", "")))
                found.append(Expression(f"panel {panel['title']!r}/{target['refId']}", target["expr"], labels))
    return found


def label_values_queries(path: Path = DASHBOARD) -> list[LabelValues]:
    """The query variables, which must all be ``label_values(metric, label)``."""
    data = json.loads(path.read_text())
    found = []
    for variable in data["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.fullmatch(variable["query"])
        if match is None:
            raise ValueError(f"variable {variable['name']}: not a label_values query: {variable['query']!r}")
        found.append(LabelValues(variable["name"], match[1], match[2]))
    return found


def rule_expressions(path: Path = RULES) -> list[Expression]:
    """Recording rules (exact labels from the name's level) and alerts (labels their annotations use)."""
    data = yaml.safe_load(path.read_text())
    found = []
    for group in data["groups"]:
        for rule in group["rules"]:
            expr = " ".join(rule["expr"].split())
            if "record" in rule:
                level = rule["record"].split(":")[0]
                found.append(Expression(f"record {rule['record']}", expr, frozenset(level.split("_")), exact=True))
            else:
                text = " ".join(str(v) for v in rule.get("annotations", {}).values())
                labels = frozenset(_ANNOTATION_LABEL.findall(text))
                found.append(Expression(f"alert {rule['alert']}", expr, labels))
    return found


def substitute(expr: str) -> str:
    """``expr`` with Grafana variables and offsets replaced as :data:`VARIABLES` says."""
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    expr = _OFFSET.sub("offset 2s", expr)
    if "$" in expr:
        raise ValueError(f"unknown variable left in {expr!r}")
    return expr


def operands(expr: str) -> list[str]:
    """The parts of ``expr`` between its top-level comparison and set operators, number literals left out."""
    parts: list[str] = []
    depth, start, i, quote = 0, 0, 0, ""
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            width = _operator_at(expr, i)
            if width:
                parts.append(expr[start:i])
                i += width
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if not _NUMBER.fullmatch(p.strip())]


def _operator_at(expr: str, i: int) -> int:
    for op in _OPERATORS:
        if expr.startswith(op, i):
            return len(op)
    for word in _SET_OPERATORS:
        end = i + len(word)
        if expr.startswith(word, i) and (i == 0 or expr[i - 1].isspace()) and (end == len(expr) or expr[end].isspace()):
            return len(word)
    return 0
