"""Tracer, Trace and steps in synchronous code."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import msgspec
import pytest

from tests.producers.conftest import RecordingTransport
from tokentrace.core.codec import decode_json_spans, encode_json
from tokentrace.core.span import Span
from tokentrace.core.timefmt import parse_rfc3339_ms
from tokentrace.producers import (
    PriceTable,
    StdoutTransport,
    Tracer,
    TracerConfig,
    current_span,
    current_trace,
)


def is_uuid4(value: str) -> bool:
    parsed = uuid.UUID(value)
    return parsed.version == 4 and str(parsed) == value


def roundtrip(span: Span) -> Span:
    """The span as a server would decode it: validation runs, so an invalid span raises here."""
    return decode_json_spans(encode_json(span))[0]


def test_record_builds_a_complete_span(tracer: Tracer, recording: RecordingTransport) -> None:
    trace = tracer.start("summarize-document", attributes={"workflow": "doc"})
    span = trace.record(
        model="test-model",
        provider="openai",
        prompt_tokens=512,
        comp_tokens=128,
        latency_ms=1240,
        attributes={"eval.score": 0.87},
    )
    assert recording.spans == []  # buffered until end()
    trace.end()
    assert recording.spans == [span]
    assert span.trace_id == trace.id and is_uuid4(trace.id) and is_uuid4(span.span_id)
    assert span.parent_span_id is None
    assert span.name == "summarize-document"
    assert (span.model, span.provider, span.caller) == ("test-model", "openai", "test-service")
    assert (span.prompt_tokens, span.comp_tokens, span.total_tokens) == (512, 128, 640)
    assert span.cost_usd == pytest.approx(512e-6 + 256e-6)
    assert span.latency_ms == 1240 and span.status == "ok" and span.error is None
    assert span.attributes == {"workflow": "doc", "eval.score": 0.87}
    assert span.started_at is not None and span.ended_at is not None
    assert parse_rfc3339_ms(span.ended_at) - parse_rfc3339_ms(span.started_at) == 1240
    assert span.ended_at.endswith("Z") and len(span.ended_at) == len("2026-03-15T14:23:01.441Z")
    assert roundtrip(span) == span


def test_explicit_cost_wins_and_unknown_model_costs_none(tracer: Tracer) -> None:
    trace = tracer.start("t")
    assert trace.record(model="test-model", prompt_tokens=10, comp_tokens=1, cost_usd=0.5).cost_usd == 0.5
    assert trace.record(model="mystery-model", prompt_tokens=10, comp_tokens=1).cost_usd is None
    assert trace.record(model="test-model", total_tokens=10).cost_usd is None  # no split: cannot price
    assert tracer.prices.unknown_models == {"mystery-model": 1}


def test_cached_tokens_are_priced_at_the_cache_rate_and_kept(tracer: Tracer) -> None:
    span = tracer.start("t").record(model="test-model", prompt_tokens=1000, comp_tokens=0, cache_read_tokens=400)
    assert span.cost_usd == pytest.approx(600e-6 + 400 * 0.5e-6)
    assert span.attributes == {"gen_ai.usage.cache_read_input_tokens": 400}


def test_record_without_latency_has_only_a_start_time(tracer: Tracer) -> None:
    span = tracer.start("t").record(model="test-model", prompt_tokens=1)
    assert span.latency_ms is None and span.ended_at is None and span.started_at is not None
    assert roundtrip(span) == span


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"model": ""}, ValueError),
        ({"prompt_tokens": -1}, ValueError),
        ({"prompt_tokens": 1.5}, ValueError),
        ({"prompt_tokens": True}, TypeError),
        ({"prompt_tokens": None}, ValueError),  # no token count at all
        ({"latency_ms": float("nan")}, ValueError),
        ({"cost_usd": -0.1}, ValueError),
        ({"status": "fine"}, ValueError),
        ({"attributes": {"eval.score": "high"}}, ValueError),
        ({"attributes": {"nested": {"a": 1}}}, TypeError),
    ],
)
def test_invalid_values_are_rejected_like_span_does(tracer: Tracer, fields: dict[str, Any], error: type) -> None:
    args: dict[str, Any] = {"model": "test-model", "prompt_tokens": 3, **fields}
    with pytest.raises(error):
        tracer.start("t").record(**args)


def test_whole_float_token_counts_become_ints(tracer: Tracer) -> None:
    three: Any = 3.0
    span = tracer.start("t").record(model="test-model", prompt_tokens=three, comp_tokens=2)
    assert span.prompt_tokens == 3 and type(span.prompt_tokens) is int and span.total_tokens == 5


def test_record_error_marks_the_last_span(tracer: Tracer, recording: RecordingTransport) -> None:
    trace = tracer.start("t")
    trace.record(model="test-model", prompt_tokens=1)
    trace.record(model="test-model", prompt_tokens=2)
    trace.record_error(TimeoutError("took 30s"))
    trace.end()
    assert [s.status for s in recording.spans] == ["ok", "timeout"]
    assert recording.spans[1].error == "TimeoutError: took 30s"
    tracer.start("other").record_error(RuntimeError("nothing to attach to"))  # logged, no exception


def test_trace_context_manager_ends_and_marks_errors(tracer: Tracer, recording: RecordingTransport) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracer.start("t") as trace:
        assert current_trace() is trace
        trace.record(model="test-model", prompt_tokens=1)
        raise RuntimeError("boom")
    assert current_trace() is None
    assert trace.ended
    [span] = recording.spans
    assert (span.status, span.error) == ("error", "RuntimeError: boom")


def test_record_after_end_is_sent_at_once(tracer: Tracer, recording: RecordingTransport) -> None:
    trace = tracer.start("t")
    trace.end()
    trace.record(model="test-model", prompt_tokens=1)
    assert len(recording.batches) == 1 and len(recording.spans) == 1


def test_buffer_is_sent_early_when_full(recording: RecordingTransport, prices: PriceTable) -> None:
    tracer = Tracer(transport=recording, prices=prices, max_buffered_spans=3)
    trace = tracer.start("t")
    for i in range(7):
        trace.record(model="test-model", prompt_tokens=i)
    assert [len(b) for b in recording.batches] == [3, 3]
    trace.end()
    assert [len(b) for b in recording.batches] == [3, 3, 1]


def test_steps_form_a_tree(tracer: Tracer, recording: RecordingTransport) -> None:
    with tracer.start("agent") as trace:
        with trace.span("plan", model="test-model") as plan:
            assert current_span() is plan
            plan.record(prompt_tokens=100, comp_tokens=10)
            with trace.span("retrieve") as retrieve:  # no model: emits nothing, still a parent
                trace.record(model="test-model", prompt_tokens=5, name="embed")
            with trace.span("answer") as answer:
                answer.record(model="test-model", prompt_tokens=7, comp_tokens=3)
        trace.record(model="test-model", prompt_tokens=1, name="final")
    by_name = {s.name: s for s in recording.spans}
    assert set(by_name) == {"plan", "embed", "answer", "final"}
    assert by_name["plan"].span_id == plan.span_id and by_name["plan"].parent_span_id is None
    assert by_name["embed"].parent_span_id == retrieve.span_id
    assert retrieve.parent_span_id == plan.span_id
    assert by_name["answer"].parent_span_id == plan.span_id
    assert by_name["final"].parent_span_id is None
    assert {s.trace_id for s in recording.spans} == {trace.id}
    assert current_span() is None
    for span in recording.spans:
        assert roundtrip(span) == span


def test_step_times_itself(tracer: Tracer, recording: RecordingTransport) -> None:
    import time

    with tracer.start("t") as trace, trace.span("slow", model="test-model") as step:
        time.sleep(0.05)
        step.record(prompt_tokens=1, comp_tokens=1)
    [span] = recording.spans
    assert span.latency_ms is not None and 45 <= span.latency_ms < 2000
    assert span.started_at is not None and span.ended_at is not None
    assert 40 <= parse_rfc3339_ms(span.ended_at) - parse_rfc3339_ms(span.started_at) < 2000
    assert span.cost_usd == pytest.approx(3e-6)


@pytest.mark.parametrize(
    ("exc", "status"),
    [(RuntimeError("upstream 500"), "error"), (TimeoutError("read timed out"), "timeout")],
)
def test_step_exception_sets_status_and_reraises(
    tracer: Tracer, recording: RecordingTransport, exc: Exception, status: str
) -> None:
    with tracer.start("t") as trace:
        with pytest.raises(type(exc)), trace.span("call", model="test-model"):
            raise exc
        trace.record(model="test-model", prompt_tokens=1, name="after")
    failed, after = recording.spans
    assert (failed.status, failed.error) == (status, f"{type(exc).__name__}: {exc}")
    assert failed.prompt_tokens == 0 and failed.cost_usd == 0  # a failed call that consumed nothing
    assert after.status == "ok"  # the trace's exit did not re-mark anything


def test_step_later_record_calls_win(tracer: Tracer, recording: RecordingTransport) -> None:
    with tracer.start("t") as trace, trace.span("stream") as step:
        step.record(model="test-model", provider="openai")
        step.set_attribute("chunk_count", 3)
        step.record(prompt_tokens=10, comp_tokens=20, attributes={"eval.score": 1})
        step.record(comp_tokens=30, latency_ms=5)
    [span] = recording.spans
    assert (span.prompt_tokens, span.comp_tokens, span.total_tokens, span.latency_ms) == (10, 30, 40, 5)
    assert span.attributes == {"chunk_count": 3, "eval.score": 1}


def test_step_without_tokens_emits_nothing(tracer: Tracer, recording: RecordingTransport) -> None:
    with tracer.start("t") as trace, trace.span("cache-hit", model="test-model"):
        pass
    assert recording.spans == []


def test_step_record_error_without_exception(tracer: Tracer, recording: RecordingTransport) -> None:
    with tracer.start("t") as trace, trace.span("call", model="test-model") as step:
        step.record(prompt_tokens=1)
        trace.record_error("refused by content filter")  # goes to the current step
    [span] = recording.spans
    assert (span.status, span.error) == ("error", "refused by content filter")


def test_step_start_end_without_with(tracer: Tracer, recording: RecordingTransport) -> None:
    trace = tracer.start("t")
    step = trace.span("manual", model="test-model").start()
    step.record(prompt_tokens=2)
    span = step.end()
    assert span is not None and span is step.span and step.done
    assert step.end() is span  # idempotent
    trace.end()
    assert recording.spans == [span]


def test_tracer_config_and_stdout_default(prices: PriceTable) -> None:
    out = io.StringIO()
    config = TracerConfig(transport=StdoutTransport(out), caller="svc", prices=prices, attributes={"env": "test"})
    tracer = Tracer(config)
    with tracer.start("job", caller="override") as trace:
        trace.record(model="test-model", prompt_tokens=1)
    line = json.loads(out.getvalue())
    assert line["caller"] == "override" and line["attributes"] == {"env": "test"}
    assert isinstance(Tracer().transport, StdoutTransport)


def test_a_raising_transport_never_reaches_the_caller(prices: PriceTable) -> None:
    class Broken(RecordingTransport):
        def send(self, spans: object) -> None:
            raise OSError("disk on fire")

    with Tracer(transport=Broken(), prices=prices).start("t") as trace:
        trace.record(model="test-model", prompt_tokens=1)


def test_spans_encode_with_exact_field_names(tracer: Tracer) -> None:
    span = tracer.start("t").record(model="test-model", prompt_tokens=1, latency_ms=2)
    assert list(msgspec.json.decode(encode_json(span))) == [
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "model",
        "provider",
        "prompt_tokens",
        "comp_tokens",
        "total_tokens",
        "cost_usd",
        "latency_ms",
        "status",
        "error",
        "caller",
        "started_at",
        "ended_at",
        "attributes",
    ]


class CountingTable(PriceTable):
    """A price table that counts the calls priced through it."""

    calls = 0

    def cost(self, *args: Any, **kwargs: Any) -> float | None:
        self.calls += 1
        return super().cost(*args, **kwargs)


def test_hot_path_cost_equals_the_price_table(recording: RecordingTransport) -> None:
    import random

    table = PriceTable()
    counting = CountingTable()
    tracer = Tracer(transport=recording, prices=counting)
    trace = tracer.start("t")
    rng = random.Random(3)
    models = [("gpt-4o", "openai"), ("gpt-4o-mini", ""), ("claude-3-5-haiku-latest", "anthropic")]
    for model, provider in models:
        for _ in range(50):  # the first call learns the rates, later calls price from the remembered rates
            prompt, comp = rng.randint(0, 10**6), rng.randint(0, 10**5)
            span = trace.record(model=model, provider=provider, prompt_tokens=prompt, comp_tokens=comp)
            assert span.cost_usd == table.cost(model, prompt, comp, provider or None)
            only_comp = trace.record(model=model, provider=provider, comp_tokens=comp)
            assert only_comp.cost_usd == table.cost(model, None, comp, provider or None)
            with trace.span("step", model=model, provider=provider) as step:
                step.record(prompt_tokens=prompt, comp_tokens=comp)
            assert step.span is not None and step.span.cost_usd == span.cost_usd
    assert counting.calls == len(models)  # one table lookup per model: the rest came from the rates


def test_wrong_types_for_text_fields(tracer: Tracer) -> None:
    trace = tracer.start("t")
    bad: Any = None
    with pytest.raises(TypeError, match="provider"):
        trace.record(model="test-model", provider=bad, prompt_tokens=1)
    number: Any = 42
    with pytest.raises(TypeError, match="name"):
        trace.record(model="test-model", name=number, prompt_tokens=1)
    with pytest.raises(TypeError, match="name"):
        tracer.start(bad)
