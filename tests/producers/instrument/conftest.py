"""Fixtures: the fake provider server, a tracer on a recording transport, real clients pointed at the server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import msgspec
import openai
import pytest

from tests.producers.conftest import RecordingTransport
from tests.producers.instrument.fakeapi import FakeProviders
from tokentrace.core.pricing import ModelPrices, PriceTable
from tokentrace.core.span import Span
from tokentrace.producers import Tracer
from tokentrace.producers.instrument import TTFT_ATTRIBUTE, instrument

#: USD per million tokens for the models the fake server answers with.
PRICES = {
    "gpt-test-2025-01-01": ModelPrices(input=2.5, output=10.0, cache_read=1.25),
    "claude-test-20250101": ModelPrices(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
}
#: The same prices worked out by hand for the fake server's usage (the oracle's own check).
OPENAI_COST = (1200 - 1024) * 2.5e-6 + 1024 * 1.25e-6 + 300 * 10e-6  # 0.00472
ANTHROPIC_COST = 100 * 3e-6 + 3000 * 0.3e-6 + 2000 * 3.75e-6 + 50 * 15e-6  # 0.00945
#: Every client's timeout: long enough for a normal answer on a loaded 2-core machine (0.3 s timed one out), short
#: of the fake server's slow answer (``SLOW_S``), which the timeout tests wait for.
CLIENT_TIMEOUT_S = 0.8

VOLATILE = ("trace_id", "span_id", "latency_ms", "started_at", "ended_at")


def stable(span: Span) -> dict[str, Any]:
    """The span's fields that do not depend on time or randomness (ids, timing and TTFT left out)."""
    fields = msgspec.structs.asdict(span)
    for name in VOLATILE:
        del fields[name]
    fields["attributes"] = {k: v for k, v in span.attributes.items() if k != TTFT_ATTRIBUTE}
    return fields


@pytest.fixture(scope="package")
def server() -> Iterator[FakeProviders]:
    providers = FakeProviders().start()
    yield providers
    providers.stop()


@pytest.fixture
def providers(server: FakeProviders) -> FakeProviders:
    server.requests.clear()
    server.first_token_delay = 0.05
    server.end_delay = 0.05
    return server


@pytest.fixture
def prices() -> PriceTable:
    return PriceTable(PRICES, use_library=False)


@pytest.fixture
def tracer(recording: RecordingTransport, prices: PriceTable) -> Tracer:
    return Tracer(transport=recording, caller="test-service", prices=prices)


def openai_options(providers: FakeProviders) -> dict[str, Any]:
    return {"base_url": providers.openai_url, "api_key": "sk-test", "max_retries": 0, "timeout": CLIENT_TIMEOUT_S}


def anthropic_options(providers: FakeProviders) -> dict[str, Any]:
    return {"base_url": providers.anthropic_url, "api_key": "sk-test", "max_retries": 0, "timeout": CLIENT_TIMEOUT_S}


@pytest.fixture
def plain_openai(providers: FakeProviders) -> Iterator[openai.OpenAI]:
    """An uninstrumented client: what the caller would get without tokentrace."""
    with openai.OpenAI(**openai_options(providers)) as client:
        yield client


@pytest.fixture
def oai(providers: FakeProviders, tracer: Tracer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(**openai_options(providers)) as client:
        yield instrument(client, tracer=tracer)


@pytest.fixture
async def async_oai(providers: FakeProviders, tracer: Tracer) -> Any:
    async with openai.AsyncOpenAI(**openai_options(providers)) as client:
        yield instrument(client, tracer=tracer)


@pytest.fixture
def plain_anthropic(providers: FakeProviders) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(**anthropic_options(providers)) as client:
        yield client


@pytest.fixture
def claude(providers: FakeProviders, tracer: Tracer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(**anthropic_options(providers)) as client:
        yield instrument(client, tracer=tracer)


@pytest.fixture
async def async_claude(providers: FakeProviders, tracer: Tracer) -> Any:
    async with anthropic.AsyncAnthropic(**anthropic_options(providers)) as client:
        yield instrument(client, tracer=tracer)
