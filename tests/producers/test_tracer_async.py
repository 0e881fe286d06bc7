"""Traces and steps in asyncio code: async context managers, tasks, timeouts, thread isolation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.producers.conftest import RecordingTransport
from tokentrace.producers import Tracer, current_span, current_trace


async def test_async_context_managers(tracer: Tracer, recording: RecordingTransport) -> None:
    async with tracer.start("agent") as trace:
        assert current_trace() is trace
        async with trace.span("call", model="test-model") as step:
            await asyncio.sleep(0.02)
            step.record(prompt_tokens=10, comp_tokens=5)
    assert current_trace() is None and trace.ended
    [span] = recording.spans
    assert span.latency_ms is not None and span.latency_ms >= 15
    assert span.cost_usd == pytest.approx(20e-6)


async def test_concurrent_tasks_get_their_own_parents(tracer: Tracer, recording: RecordingTransport) -> None:
    async def worker(trace_step_name: str) -> str:
        trace = current_trace()
        assert trace is not None
        async with trace.span(trace_step_name, model="test-model") as step:
            await asyncio.sleep(0.01)  # interleave with the other workers
            assert current_span() is step
            trace.record(model="test-model", prompt_tokens=1, name=f"{trace_step_name}/call")
            await asyncio.sleep(0.01)
            step.record(prompt_tokens=2)
            span_id: str = step.span_id
            return span_id

    async with tracer.start("fan-out") as trace, trace.span("root") as root:
        ids = await asyncio.gather(*(worker(f"w{i}") for i in range(5)))
    by_name = {s.name: s for s in recording.spans}
    for i, step_id in enumerate(ids):
        assert by_name[f"w{i}"].span_id == step_id
        assert by_name[f"w{i}"].parent_span_id == root.span_id  # the task inherited the root step
        assert by_name[f"w{i}/call"].parent_span_id == step_id  # not a sibling's id
    assert len(set(ids)) == 5


async def test_asyncio_timeout_marks_timeout(tracer: Tracer, recording: RecordingTransport) -> None:
    async with tracer.start("t") as trace:
        with pytest.raises(TimeoutError):
            async with trace.span("slow-call", model="test-model"):
                await asyncio.wait_for(asyncio.sleep(5), timeout=0.01)
    [span] = recording.spans
    assert span.status == "timeout" and span.error is not None and span.error.startswith("TimeoutError")


async def test_async_trace_exception_is_recorded_and_reraised(tracer: Tracer, recording: RecordingTransport) -> None:
    with pytest.raises(ValueError, match="bad answer"):
        async with tracer.start("t") as trace:
            trace.record(model="test-model", prompt_tokens=1)
            raise ValueError("bad answer")
    [span] = recording.spans
    assert (span.status, span.error) == ("error", "ValueError: bad answer")


def test_threads_do_not_share_the_current_step(tracer: Tracer, recording: RecordingTransport) -> None:
    trace = tracer.start("threads")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with trace.span(f"t{i}", model="test-model") as step:
                barrier.wait(5)  # all four steps are open at once
                assert current_span() is step
                trace.record(model="test-model", prompt_tokens=1, name=f"t{i}/call")
                step.record(prompt_tokens=1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trace.end()
    assert not errors
    by_name = {s.name: s for s in recording.spans}
    for i in range(4):
        assert by_name[f"t{i}"].parent_span_id is None
        assert by_name[f"t{i}/call"].parent_span_id == by_name[f"t{i}"].span_id
