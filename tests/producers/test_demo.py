"""The demo traffic: realistic traces that are over by the time they are sent, so a window counts them all."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

from tokentrace.core.timefmt import parse_rfc3339_ms
from tokentrace.producers.demo import DemoTraffic

AT = 1_796_613_600_000 + 59_000  # one second before a minute turns: a span starting later is in the next bucket


def test_every_trace_ends_when_it_is_sent_and_keeps_its_shape() -> None:
    batch = DemoTraffic(seed=7).next_batch(500, AT)
    traces = defaultdict(list)
    for span in batch:
        assert span.started_at and span.ended_at
        start, end = parse_rfc3339_ms(span.started_at), parse_rfc3339_ms(span.ended_at)
        assert start <= end <= AT, "no demo span may start or end after it is sent"
        assert end - start == round(span.latency_ms or 0)  # moved in time, not stretched
        traces[span.trace_id].append((start, end, span))
    assert all(max(end for _, end, _ in spans) == AT for spans in traces.values())
    agents = [spans for spans in traces.values() if len(spans) > 2]
    assert agents, "the demo shows multi-step agent traces"
    for spans in agents:
        children = sorted((s for s in spans if s[2].parent_span_id), key=lambda s: s[0])
        for (_, end, _), (start, _, _) in pairwise(children):
            assert start == end, "an agent's steps run one after another"


def test_the_same_seed_gives_the_same_traffic() -> None:
    first = DemoTraffic(seed=3).next_batch(50, AT)
    again = DemoTraffic(seed=3).next_batch(50, AT)
    strip = lambda spans: [(s.name, s.model, s.started_at, s.prompt_tokens) for s in spans]  # noqa: E731
    assert strip(first) == strip(again)
