"""Realistic demo traffic: several models and providers, callers, errors and timeouts, eval scores,
and multi-step agent traces with child spans — so a new user sees live numbers at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp

from tokentrace.core.codec import encode_json
from tokentrace.core.span import Span, new_id
from tokentrace.core.timefmt import format_ms, now_ms, parse_rfc3339_ms

__all__ = ["DemoTraffic", "ModelProfile", "post_demo_traffic"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelProfile:
    model: str
    provider: str
    latency_median_ms: float
    error_rate: float
    timeout_rate: float
    quality: float


MODELS = (
    ModelProfile("gpt-4o", "openai", 900, 0.01, 0.005, 0.88),
    ModelProfile("gpt-4o-mini", "openai", 350, 0.008, 0.002, 0.79),
    ModelProfile("claude-3-5-sonnet-20241022", "anthropic", 1100, 0.012, 0.004, 0.9),
    ModelProfile("claude-3-5-haiku-20241022", "anthropic", 450, 0.01, 0.003, 0.8),
    ModelProfile("gemini-1.5-flash", "google", 400, 0.015, 0.006, 0.76),
)
CALLERS = ("summarizer-service", "support-bot", "search-api", "agent-runner")
WORKFLOWS = {
    "summarizer-service": "document-summary",
    "support-bot": "support-chat",
    "search-api": "query-rewrite",
    "agent-runner": "research-agent",
}
AGENT_STEPS = ("plan", "retrieve", "reason", "draft", "critique")


class DemoTraffic:
    """A seeded generator of traces; ``next_batch`` returns the spans of ~``size`` calls."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)

    def _call(
        self, profile: ModelProfile, name: str, caller: str, trace_id: str, parent: str | None, start_ms: int
    ) -> Span:
        rng = self.rng
        prompt = int(rng.lognormvariate(6.5, 0.8))
        comp = int(rng.lognormvariate(4.8, 0.7))
        latency = rng.lognormvariate(0, 0.45) * profile.latency_median_ms * (1 + prompt / 20_000)
        roll = rng.random()
        status = "ok"
        error = None
        if roll < profile.timeout_rate:
            status, error, latency, comp = "timeout", "request timed out after 30s", 30_000.0, 0
        elif roll < profile.timeout_rate + profile.error_rate:
            status, error, comp = (
                "error",
                rng.choice(("rate limited (429)", "upstream 500", "context too long")),
                0,
            )
        attributes: dict[str, str | int | float | bool] = {"workflow": WORKFLOWS[caller]}
        if status == "ok" and rng.random() < 0.6:
            attributes["eval.score"] = round(min(1.0, max(0.0, rng.gauss(profile.quality, 0.08))), 3)
        latency = round(latency, 1)
        return Span(
            trace_id=trace_id,
            span_id=new_id(),
            parent_span_id=parent,
            name=name,
            model=profile.model,
            provider=profile.provider,
            prompt_tokens=prompt,
            comp_tokens=comp,
            latency_ms=latency,
            status=status,  # type: ignore[arg-type]
            error=error,
            caller=caller,
            started_at=format_ms(start_ms),
            ended_at=format_ms(start_ms + round(latency)),
            attributes=attributes,
        )

    def traces(self, at_ms: int) -> Iterator[list[Span]]:
        """An endless stream of traces, each ending at ``at_ms`` (reported once done, as an application would:
        no span of the demo's traffic lies in the future, so a window's figures include every span sent)."""
        rng = self.rng
        while True:
            caller = rng.choice(CALLERS)
            trace_id = new_id()
            if caller == "agent-runner":
                root_id = new_id()
                spans: list[Span] = []
                start = at_ms
                for step in AGENT_STEPS[: rng.randint(2, len(AGENT_STEPS))]:
                    profile = rng.choice(MODELS)
                    span = self._call(profile, step, caller, trace_id, root_id, start)
                    spans.append(span)
                    start += round(span.latency_ms or 0)
                root = self._call(rng.choice(MODELS[:2]), "research-agent", caller, trace_id, None, at_ms)
                root.span_id = root_id
                spans.insert(0, root)
                yield _ending_at(spans, at_ms)
            else:
                profile = rng.choices(MODELS, weights=(3, 5, 2, 2, 1))[0]
                yield _ending_at([self._call(profile, WORKFLOWS[caller], caller, trace_id, None, at_ms)], at_ms)

    def next_batch(self, size: int, at_ms: int | None = None) -> list[Span]:
        at = now_ms() if at_ms is None else at_ms
        batch: list[Span] = []
        for trace in self.traces(at):
            batch.extend(trace)
            if len(batch) >= size:
                return batch
        return batch  # pragma: no cover - traces() never ends


def _ending_at(spans: list[Span], at_ms: int) -> list[Span]:
    """``spans`` (one trace, built from ``at_ms`` on) moved back in time so that the last of them ends at ``at_ms``."""
    ends = [parse_rfc3339_ms(span.ended_at) for span in spans if span.ended_at]
    shift = at_ms - max(ends, default=at_ms)
    for span in spans:
        if span.started_at:
            span.started_at = format_ms(parse_rfc3339_ms(span.started_at) + shift)
        if span.ended_at:
            span.ended_at = format_ms(parse_rfc3339_ms(span.ended_at) + shift)
    return spans


async def post_demo_traffic(
    url: str, rate_per_s: float = 20.0, token: str | None = None, seed: int | None = None
) -> None:
    """POST demo spans to ``{url}/spans`` at about ``rate_per_s`` spans per second, until cancelled."""
    traffic = DemoTraffic(seed)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    interval = 1.0
    async with aiohttp.ClientSession(headers=headers) as session:
        while True:
            batch = traffic.next_batch(max(1, round(rate_per_s * interval)))
            try:
                async with session.post(f"{url}/spans", data=encode_json(batch)) as response:
                    if response.status != 202:
                        log.warning(
                            "demo traffic: POST /spans answered %d: %s",
                            response.status,
                            await response.text(),
                        )
            except aiohttp.ClientError as exc:
                log.warning("demo traffic: %s", exc)
            await asyncio.sleep(interval)
