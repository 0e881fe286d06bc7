"""Pricing: the bundled genai-prices snapshot, cached linear rates, overrides and unknown models."""

from __future__ import annotations

import logging
import random
import threading
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrace.core import pricing
from tokentrace.core.buckets import OVERFLOW
from tokentrace.core.pricing import MAX_CACHED_LOOKUPS, MAX_UNKNOWN_MODELS, ModelPrices, PriceTable, cost


def library(model: str, prompt: int, comp: int, provider: str | None = None, read: int = 0, write: int = 0) -> float:
    usage = Usage(
        input_tokens=prompt, output_tokens=comp, cache_read_tokens=read or None, cache_write_tokens=write or None
    )
    return float(calc_price(usage, model, provider_id=provider).total_price)


def test_gpt4o_matches_the_library() -> None:
    table = PriceTable()
    assert table.cost("gpt-4o", 512, 128, "openai") == pytest.approx(library("gpt-4o", 512, 128, "openai"))
    assert table.cost("gpt-4o", 512, 128, "openai") == 0.00256  # $2.50 / $10 per million, rounded to 1e-10


def test_module_level_cost_uses_the_default_table() -> None:
    assert cost("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)
    assert pricing.default_table() is pricing.default_table()


def test_cached_tokens_are_part_of_the_prompt_and_priced_once() -> None:
    table = PriceTable()
    # gpt-4o: input $2.50, cache read $1.25 per million. 1000 prompt tokens of which 400 cached:
    assert table.cost("gpt-4o", 1000, 0, "openai", cache_read_tokens=400) == pytest.approx(600 * 2.5e-6 + 400 * 1.25e-6)
    # Anthropic cache writes have their own rate.
    sonnet = "claude-3-5-sonnet-20241022"
    got = table.cost(sonnet, 5000, 100, "anthropic", cache_read_tokens=1000, cache_write_tokens=2000)
    assert got == pytest.approx(library(sonnet, 5000, 100, "anthropic", 1000, 2000))
    assert got == pytest.approx(2000 * 3e-6 + 1000 * 0.3e-6 + 2000 * 3.75e-6 + 100 * 15e-6)


def test_cached_tokens_cannot_exceed_the_prompt() -> None:
    with pytest.raises(ValueError, match="must include cached tokens"):
        PriceTable().cost("gpt-4o", 100, 0, cache_read_tokens=101)


@pytest.mark.parametrize("bad", [-1, 1.5, float("nan"), True, "12"])
def test_invalid_token_counts(bad: object) -> None:
    with pytest.raises(ValueError):
        PriceTable().cost("gpt-4o", bad, 0)  # type: ignore[arg-type]


def test_none_and_whole_float_counts() -> None:
    table = PriceTable()
    assert table.cost("gpt-4o", None, 100) == pytest.approx(100 * 10e-6)
    assert table.cost("gpt-4o", 100.0, 0) == pytest.approx(100 * 2.5e-6)


def test_unknown_model_is_none_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()
    with caplog.at_level(logging.WARNING, logger="tokentrace.core.pricing"):
        assert table.cost("no-such-model-xyz", 10, 10) is None
        assert table.cost("no-such-model-xyz", 10, 10) is None
        assert table.cost("gpt-4o", 10, 10, provider="no-such-provider") is None
    assert table.unknown_models == {"no-such-model-xyz": 2, "gpt-4o": 1}
    assert table.stats() == table.unknown_models
    warnings = [r for r in caplog.records if "no price for model" in r.getMessage()]
    assert len(warnings) == 2
    assert not table.knows("no-such-model-xyz") and table.knows("gpt-4o")
    assert table.unknown_models["no-such-model-xyz"] == 2  # knows() is not a lookup


def test_overrides_win_over_the_library() -> None:
    table = PriceTable({"gpt-4o": {"input": 1.0, "output": 1.0}, "Local-Llama": ModelPrices(0.1, 0.2, 0.05)})
    assert table.cost("gpt-4o", 1_000_000, 1_000_000, "openai") == pytest.approx(2.0)
    assert table.cost("local-llama", 1_000_000, 0, cache_read_tokens=500_000) == pytest.approx(0.05 + 0.025)
    assert table.cost("gpt-4o-mini", 1000, 0) == pytest.approx(library("gpt-4o-mini", 1000, 0))


def test_overrides_from_config_objects() -> None:
    from types import SimpleNamespace

    table = PriceTable({"m": SimpleNamespace(input=1.0, output=2.0, cache_read=None, cache_write=None)})
    assert table.cost("m", 1_000_000, 1_000_000) == pytest.approx(3.0)


def test_override_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown price keys"):
        PriceTable({"m": {"input": 1, "output": 2, "cached": 1}})
    with pytest.raises(ValueError, match="needs"):
        PriceTable({"m": {"input": 1}})
    with pytest.raises(ValueError, match="finite number"):
        ModelPrices(-1, 0)


def test_overrides_only_table() -> None:
    table = PriceTable({"mine": ModelPrices(1, 1)}, use_library=False)
    assert table.cost("gpt-4o", 1, 1) is None
    assert table.cost("mine", 1_000_000, 0) == 1.0


def test_rates_are_derived_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = pricing._calc

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pricing, "_calc", counting)
    table = PriceTable()
    table.cost("gpt-4o", 1, 1, "openai")
    derived = calls
    for i in range(100):
        table.cost("gpt-4o", i, i, "openai")
    assert calls == derived <= 6


def test_tiered_models_are_priced_by_tier() -> None:
    table = PriceTable()
    model = "gemini-2.5-pro"  # tiered: a higher rate for prompts over 200k tokens
    small, large = table.cost(model, 100_000, 1000), table.cost(model, 300_000, 1000)
    assert small == pytest.approx(library(model, 100_000, 1000))
    assert large == pytest.approx(library(model, 300_000, 1000))
    assert large is not None and small is not None and large / 3 > small  # not linear
    assert isinstance(table._cache[(model, None)], pricing._Tiered)  # linear rates per tier, no library call


def test_linear_rates_agree_with_the_library_for_many_models() -> None:
    """For every bundled (provider, model) that takes token usage, the cached rates give the library's price."""
    from genai_prices.data import providers

    rng = random.Random(7)
    table = PriceTable()
    checked = 0
    for provider in providers:
        for model in provider.models[:40]:
            if table.cost(model.id, 0, 0, provider.id) is None:
                continue
            prompt = rng.randint(0, 150_000)
            comp, read = rng.randint(0, 5000), rng.randint(0, prompt // 2)
            ours = table.cost(model.id, prompt, comp, provider.id, cache_read_tokens=read)
            theirs = library(model.id, prompt, comp, provider.id, read)
            assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9), (provider.id, model.id)
            checked += 1
    assert checked > 300


def test_price_change_dates_expire_cached_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    table = PriceTable()
    table.cost("gpt-4o", 1, 1, "openai")
    key = ("gpt-4o", "openai")
    stale = pricing.Rates(0.0, 1.0, 1.0, 1.0, 1.0, expires=1.0)  # expired long ago
    table._cache[key] = stale
    assert table.cost("gpt-4o", 1_000_000, 0, "openai") == pytest.approx(2.5)
    assert table._cache[key] is not stale


def test_thread_safe_unknown_counter() -> None:
    table = PriceTable()
    table.cost("unknown-abc", 1, 1)

    def hammer() -> None:
        for _ in range(1000):
            table.cost("unknown-abc", 1, 1)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert table.unknown_models["unknown-abc"] == 4001


def test_results_are_rounded_floats() -> None:
    got = PriceTable().cost("gpt-4o", 512, 128)
    assert isinstance(got, float) and repr(got) == "0.00256"
    assert Decimal(repr(got)) == Decimal("0.00256")


TIERED_MODELS = ("gemini-1.5-flash", "gemini-1.5-pro", "gemini-2.5-pro", "claude-sonnet-4-5")


@given(
    st.sampled_from(TIERED_MODELS),
    st.one_of(st.integers(0, 400_000), st.integers(127_990, 128_010), st.integers(199_990, 200_010)),
    st.integers(0, 20_000),
    st.data(),
)
@settings(max_examples=300)
def test_tiered_models_match_the_library_on_both_sides_of_a_tier(
    model: str, prompt: int, comp: int, data: st.DataObject
) -> None:
    from tokentrace.core.pricing import _calc

    cache_read = data.draw(st.integers(0, prompt))
    table = PriceTable()
    got = table.cost(model, prompt, comp, cache_read_tokens=cache_read)
    want = float(_calc(model, None, prompt, comp, cache_read, 0).total_price)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-10)


def test_a_flood_of_unknown_models_is_counted_exactly_in_bounded_memory(caplog: pytest.LogCaptureFixture) -> None:
    """Distinct model names past any label cap (sent straight to Kafka, priced by the workers): the first
    ``MAX_UNKNOWN_MODELS`` are counted and logged apart, the rest counted together under ``__overflow__`` and
    logged once; every lookup is counted; the lookup cache stays bounded and known models still price."""
    table = PriceTable()
    names = [f"flood-{i}" for i in range(MAX_UNKNOWN_MODELS + 1500)]
    with caplog.at_level(logging.WARNING, logger="tokentrace.core.pricing"):
        for name in [*names, *names[:10], *names[-10:]]:
            assert table.cost(name, 10, 10) is None
    assert len(table.unknown_models) == MAX_UNKNOWN_MODELS + 1
    assert sum(table.unknown_models.values()) == len(names) + 20
    assert table.unknown_models["flood-0"] == 2
    assert table.unknown_models[OVERFLOW] == len(names) - MAX_UNKNOWN_MODELS + 10
    assert len(caplog.records) == MAX_UNKNOWN_MODELS + 1
    for i in range(MAX_CACHED_LOOKUPS + 10):
        table.knows(f"other-{i}")
    assert len(table._cache) <= MAX_CACHED_LOOKUPS
    assert table.cost("gpt-4o", 512, 128) == PriceTable().cost("gpt-4o", 512, 128)
