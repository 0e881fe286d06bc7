"""Comparison operators of alert rules: canonical names, their symbol aliases, and evaluation."""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["OPS", "Op", "compare", "normalize_op"]

Op = Literal["gt", "gte", "lt", "lte", "eq"]

OPS: tuple[Op, ...] = ("gt", "gte", "lt", "lte", "eq")
_ALIASES: dict[str, Op] = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte", "==": "eq"}
_BY_NAME: dict[str, Op] = {**{op: op for op in OPS}, **_ALIASES}


def normalize_op(text: str) -> Op:
    """The canonical op for ``text`` (``>`` → ``gt``); ValueError naming what is accepted."""
    try:
        return _BY_NAME[text.strip()]
    except (KeyError, AttributeError):
        accepted = ", ".join([*OPS, *_ALIASES])
        raise ValueError(f"op: unknown operator {text!r}, use one of {accepted}") from None


def compare(op: Op, value: float, threshold: float) -> bool:
    """Whether ``value op threshold`` holds; ``eq`` tolerates float rounding (relative 1e-9)."""
    if op == "gt":
        return value > threshold
    if op == "gte":
        return value >= threshold
    if op == "lt":
        return value < threshold
    if op == "lte":
        return value <= threshold
    return math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-12)
