"""The synthetic spans the distributed benchmarks produce: traces of one to three LLM calls, priced and scored.

The same generator as the test suite's harness (tests/processors/harness.py), so the figures in
bench/RESULTS.md stay comparable from one version of the scripts to the next: 3 models of 2 providers,
3 callers, a ``workflow`` attribute, 60 % of spans with an ``eval.score``, 7 % errors and 3 % timeouts.
"""

from __future__ import annotations

import random
from typing import Any

from tokentrace.core.span import Span, new_id
from tokentrace.core.timefmt import format_ms, now_ms

__all__ = ["CALLERS", "MODELS", "WORKFLOWS", "make_spans"]

MODELS = (("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-3-5-sonnet", "anthropic"))
CALLERS = ("summarizer", "search", "chat")
WORKFLOWS = ("ingest", "answer", "review", "triage")


def make_spans(count: int, rng: random.Random, now: int | None = None, spread_ms: int = 50 * 60_000) -> list[Span]:
    """``count`` spans of 1-3 span traces started over the ``spread_ms`` before ``now`` (default: now)."""
    now = now or now_ms()
    spans: list[Span] = []
    while len(spans) < count:
        trace_id = new_id()
        root = None
        started = now - rng.randrange(0, spread_ms)
        for _ in range(min(rng.randrange(1, 4), count - len(spans))):
            model, provider = rng.choice(MODELS)
            status = rng.choices(("ok", "error", "timeout"), (90, 7, 3))[0]
            attributes: dict[str, Any] = {"workflow": rng.choice(WORKFLOWS)}
            if rng.random() < 0.6:
                attributes["eval.score"] = round(rng.random(), 3)
            span = Span(
                trace_id=trace_id,
                parent_span_id=root,
                name=f"step-{len(spans) % 5}",
                model=model,
                provider=provider,
                prompt_tokens=rng.randrange(1, 4000),
                comp_tokens=rng.randrange(0, 800),
                cost_usd=round(rng.random() / 100, 7),
                latency_ms=rng.randrange(20, 9000),
                status=status,
                caller=rng.choice(CALLERS),
                started_at=format_ms(started),
                attributes=attributes,
            )
            root = root or span.span_id
            spans.append(span)
    return spans
