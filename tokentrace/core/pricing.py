"""What an inference call cost, in USD: an override table first, then genai-prices' bundled snapshot.

Token conventions (OpenAI's): ``prompt_tokens`` *includes* cache-read and cache-write tokens, which are
priced at their own rates instead of the input rate (never counted twice); ``comp_tokens`` includes
reasoning tokens. For Anthropic, whose ``input_tokens`` excludes cached tokens, pass
``prompt_tokens = input_tokens + cache_read_input_tokens + cache_creation_input_tokens``.

Only the price data bundled with genai-prices is used; nothing is fetched from the network. Looking a
price up in the library is slow (~120 µs), so for each ``(model, provider)`` the table derives per-token
rates once and prices later calls with a few multiplications. Models whose price is not linear in the
token counts (tiered prices, time-of-day prices) are priced exactly by the library on every call. A model
that neither the overrides nor the library know costs ``None`` (never 0): the lookup is counted in
``PriceTable.unknown_models`` and logged once per model, for the first ``MAX_UNKNOWN_MODELS`` names; the rest
are counted together under ``__overflow__`` (logged once), and the lookup cache is bounded too
(``MAX_CACHED_LOOKUPS``): a flood of distinct model names (100k, sent straight to Kafka past any API's label caps)
costs neither the workers' memory nor the ``tokentrace_price_lookup_misses_total{model}`` label sets without bound.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokentrace.core.buckets import OVERFLOW

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot

__all__ = ["MAX_CACHED_LOOKUPS", "MAX_UNKNOWN_MODELS", "ModelPrices", "PriceTable", "Rates", "cost", "default_table"]

log = logging.getLogger(__name__)

#: Unknown model names counted (and logged) apart in ``PriceTable.unknown_models``; the rest count as ``OVERFLOW``.
MAX_UNKNOWN_MODELS: Final = 1000
#: (model, provider) lookups cached; past this the cache starts over (each entry is re-derived when next used).
MAX_CACHED_LOOKUPS: Final = 10_000

_PER_MILLION: Final = 1_000_000
#: Costs are rounded to 1e-10 USD so that 512 * 2.5e-6 prints as 0.00128, not 0.0012800000000000001.
_SCALE: Final = 1e10
_OVERRIDE_KEYS: Final = frozenset({"input", "output", "cache_read", "cache_write"})


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """Prices in USD per million tokens. Cache prices default to the input price."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def __post_init__(self) -> None:
        for field in ("input", "output", "cache_read", "cache_write"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"{field} price must be a finite number >= 0 (USD per million tokens), got {value!r}")

    @classmethod
    def parse(cls, value: object) -> ModelPrices:
        """Accept a ``ModelPrices``, a config mapping such as ``{"input": 2.5, "output": 10}``, or any object
        with ``input``/``output`` (and optional ``cache_read``/``cache_write``) attributes."""
        if isinstance(value, ModelPrices):
            return value
        if not isinstance(value, Mapping):
            fields = ("input", "output", "cache_read", "cache_write")
            value = {k: getattr(value, k) for k in fields if getattr(value, k, None) is not None}
        unknown = set(value) - _OVERRIDE_KEYS
        if unknown:
            raise ValueError(f"unknown price keys {sorted(unknown)}; use {sorted(_OVERRIDE_KEYS)}")
        missing = {"input", "output"} - set(value)
        if missing:
            raise ValueError(f"price override needs {sorted(missing)} (USD per million tokens)")
        return cls(**value)


def _round(usd: float) -> float:
    """Round a non-negative cost to 1e-10 USD (``round(x, 10)`` is five times slower)."""
    return int(usd * _SCALE + 0.5) / _SCALE


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-token USD rates of a linearly priced model.

    cost = per_call + uncached prompt tokens * input + comp tokens * output + cache-read tokens * cache_read
    + cache-write tokens * cache_write, rounded to 1e-10 USD.
    """

    per_call: float
    input: float
    output: float
    cache_read: float
    cache_write: float
    #: Epoch seconds after which the rates must be derived again (a dated price change), or inf.
    expires: float = math.inf

    @classmethod
    def from_prices(cls, prices: ModelPrices) -> Rates:
        cache_read = prices.input if prices.cache_read is None else prices.cache_read
        cache_write = prices.input if prices.cache_write is None else prices.cache_write
        return cls(
            0.0,
            prices.input / _PER_MILLION,
            prices.output / _PER_MILLION,
            cache_read / _PER_MILLION,
            cache_write / _PER_MILLION,
        )

    def cost(self, prompt: int, comp: int, cache_read: int = 0, cache_write: int = 0) -> float:
        """The call's cost in USD, rounded to 1e-10 (the one pricing formula: every path prices through it).

        The counts must be whole numbers >= 0 with ``cache_read + cache_write <= prompt`` (not checked here:
        ``PriceTable.cost`` checks them). Rounded as ``_round`` does, inlined: this runs for every span.
        """
        usd = self.per_call + prompt * self.input + comp * self.output
        if cache_read or cache_write:  # cached prompt tokens at their own rates instead of the input rate
            usd += cache_read * (self.cache_read - self.input) + cache_write * (self.cache_write - self.input)
        return int(usd * _SCALE + 0.5) / _SCALE


@dataclass(frozen=True, slots=True)
class _Tiered:
    """Prices tiered by the call's input tokens: linear rates per tier region.

    Region ``i`` holds calls whose input tokens lie in ``(starts[i-1], starts[i]]`` (region 0 from 0), as
    genai-prices applies a tier when the input exceeds its start.
    """

    starts: tuple[int, ...]
    regions: tuple[Rates, ...]
    expires: float = math.inf

    def cost(self, prompt: int, comp: int, cache_read: int, cache_write: int) -> float:
        return self.regions[bisect_left(self.starts, prompt)].cost(prompt, comp, cache_read, cache_write)


@dataclass(frozen=True, slots=True)
class _Exact:
    """The library prices every call (tiered or time-of-day prices)."""

    expires: float = math.inf


@dataclass(frozen=True, slots=True)
class _Unknown:
    """Neither the override table nor the library knows this model (with this provider)."""

    reason: str
    expires: float = math.inf


_Entry = Rates | _Tiered | _Exact | _Unknown

_snapshot_lock = threading.Lock()
_snapshot: DataSnapshot | None = None


def _bundled_snapshot() -> DataSnapshot:
    """genai-prices' bundled data in a snapshot of our own, so a process-wide ``UpdatePrices`` elsewhere
    cannot make this module use downloaded prices."""
    global _snapshot
    with _snapshot_lock:
        if _snapshot is None:
            from genai_prices.data import providers
            from genai_prices.data_snapshot import DataSnapshot

            _snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        return _snapshot


def _calc(
    model: str, provider: str | None, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> Any:
    """One exact library lookup (a ``genai_prices.types.PriceCalculation``). Raises LookupError if unknown."""
    from genai_prices import Usage

    usage = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read or None,
        cache_write_tokens=cache_write or None,
    )
    return _bundled_snapshot().calc(usage, model, provider, None, datetime.now(UTC))


def _is_nonlinear(calculation: Any) -> bool:
    """Tiered prices or time-of-day prices cannot be reduced to fixed per-token rates."""
    from genai_prices.types import TieredPrices, TimeOfDateConstraint

    if any(isinstance(value, TieredPrices) for value in vars(calculation.model_price).values()):
        return True
    prices = calculation.model.prices
    return isinstance(prices, list) and any(isinstance(p.constraint, TimeOfDateConstraint) for p in prices)


def _next_price_change(calculation: Any, now: float) -> float:
    """Epoch seconds of the model's next dated price change after ``now``, or inf."""
    from genai_prices.types import StartDateConstraint

    prices = calculation.model.prices
    if not isinstance(prices, list):
        return math.inf
    upcoming = [
        datetime(c.start_date.year, c.start_date.month, c.start_date.day, tzinfo=UTC).timestamp()
        for c in (p.constraint for p in prices)
        if isinstance(c, StartDateConstraint)
    ]
    return min((t for t in upcoming if t > now), default=math.inf)


def _derive(model: str, provider: str | None) -> _Entry:
    """Derive per-token rates from a handful of library lookups, or decide the model needs exact pricing."""
    million = _PER_MILLION
    try:
        first = _calc(model, provider, 0, 0, 0, 0)
    except LookupError as exc:
        return _Unknown(str(exc))
    expires = _next_price_change(first, time.time())
    if _is_nonlinear(first):
        return _derive_tiered(model, provider, first, expires)
    try:
        per_call = float(first.total_price)
        rates = Rates(
            per_call,
            float(_calc(model, provider, million, 0, 0, 0).total_price - first.total_price) / million,
            float(_calc(model, provider, 0, million, 0, 0).total_price - first.total_price) / million,
            float(_calc(model, provider, million, 0, million, 0).total_price - first.total_price) / million,
            float(_calc(model, provider, million, 0, 0, million).total_price - first.total_price) / million,
            expires,
        )
        # A mixed probe must agree with the rates; anything else the library does is priced exactly.
        probe = (1_234_567, 76_543, 234_567, 12_345)
        exact = float(_calc(model, provider, probe[0], probe[1], probe[2], probe[3]).total_price)
    except (ValueError, ArithmeticError) as exc:
        log.debug("pricing %s (%s) exactly: rates could not be derived: %s", model, provider, exc)
        return _Exact(expires)
    if not _agrees(rates.cost(*probe), exact):
        return _Exact(expires)
    return rates


def _agrees(cost: float, exact: float) -> bool:
    """Whether rates priced a probe as the library did, up to the 1e-10 USD that costs are rounded to."""
    return math.isclose(cost, exact, rel_tol=1e-9, abs_tol=1.5 / _SCALE)


def _derive_tiered(model: str, provider: str | None, first: Any, expires: float) -> _Tiered | _Exact:
    """Linear rates per input-token tier, checked against the library inside every region; else exact."""
    from genai_prices.types import TieredPrices

    prices = list(vars(first.model_price).values())
    if not all(isinstance(v, TieredPrices | Decimal) or v is None for v in prices):
        return _Exact(expires)
    starts = sorted({int(t.start) for v in prices if isinstance(v, TieredPrices) for t in v.tiers})
    if not starts or (isinstance(first.model.prices, list) and len(first.model.prices) > 1):
        return _Exact(expires)  # several dated or time-of-day prices: let the library choose every time

    def total(inp: int, out: int = 0, read: int = 0, write: int = 0) -> float:
        return float(_calc(model, provider, inp, out, read, write).total_price)

    regions: list[Rates] = []
    million = _PER_MILLION
    try:
        for index, low in enumerate([0, *starts]):
            high = starts[index] if index < len(starts) else low + 10 * million
            n0, n1 = low + 1, high
            base = total(n0)
            input_rate = (total(n1) - base) / (n1 - n0)
            per_call = base - n0 * input_rate
            rates = Rates(
                per_call,
                input_rate,
                (total(n0, million) - base) / million,
                (total(n0, 0, n0) - per_call) / n0,
                (total(n0, 0, 0, n0) - per_call) / n0,
                expires,
            )
            mid = (n0 + n1) // 2
            probe = (mid, 7_654, mid // 3, mid // 7)
            if not _agrees(rates.cost(*probe), total(*probe)):
                return _Exact(expires)
            regions.append(rates)
    except (ValueError, ArithmeticError, ZeroDivisionError) as exc:
        log.debug("pricing %s (%s) exactly: tier rates could not be derived: %s", model, provider, exc)
        return _Exact(expires)
    return _Tiered(tuple(starts), tuple(regions), expires)


def _tokens(value: int | float | None, field: str) -> int:
    if type(value) is int and value >= 0:
        return value
    if value is None:
        return 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value >= 0
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise ValueError(f"{field} must be a whole number >= 0, got {value!r}")
    return int(value)


class PriceTable:
    """Prices inference calls; thread-safe.

    ``overrides`` maps a model name (case-insensitive) to its prices: a ``ModelPrices``, a config mapping
    with the keys ``input``, ``output``, ``cache_read``, ``cache_write`` in USD per million tokens, or an
    object with those attributes. An override wins over the library for every provider.
    ``use_library=False`` prices from the overrides alone.
    """

    def __init__(
        self,
        overrides: Mapping[str, object] | None = None,
        *,
        use_library: bool = True,
    ) -> None:
        self._overrides = {
            name.lower(): Rates.from_prices(ModelPrices.parse(p)) for name, p in (overrides or {}).items()
        }
        self._use_library = use_library
        self._cache: dict[tuple[str, str | None], _Entry] = {}
        self._lock = threading.Lock()
        #: Lookups of models no table knows, by model name (read by the server; copy under ``stats``).
        self.unknown_models: dict[str, int] = {}

    def cost(
        self,
        model: str,
        prompt_tokens: int | float | None,
        comp_tokens: int | float | None,
        provider: str | None = None,
        cache_read_tokens: int | float | None = 0,
        cache_write_tokens: int | float | None = 0,
    ) -> float | None:
        """The call's cost in USD, or ``None`` when the model's price is unknown.

        Raises ValueError for negative or fractional token counts, or cached tokens exceeding the prompt.
        """
        provider = provider or None
        entry = self._cache.get((model, provider))
        # Fast path: whole-number counts and cached linear rates (one dict lookup, a few multiplications).
        if (
            type(entry) is Rates
            and entry.expires == math.inf
            and type(prompt_tokens) is int
            and type(comp_tokens) is int
            and type(cache_read_tokens) is int
            and type(cache_write_tokens) is int
            and comp_tokens >= 0
            and cache_read_tokens >= 0
            and cache_write_tokens >= 0
            and prompt_tokens >= cache_read_tokens + cache_write_tokens
        ):
            return entry.cost(prompt_tokens, comp_tokens, cache_read_tokens, cache_write_tokens)
        return self._cost(model, provider, prompt_tokens, comp_tokens, cache_read_tokens, cache_write_tokens)

    def _cost(
        self,
        model: str,
        provider: str | None,
        prompt_tokens: int | float | None,
        comp_tokens: int | float | None,
        cache_read_tokens: int | float | None,
        cache_write_tokens: int | float | None,
    ) -> float | None:
        prompt = _tokens(prompt_tokens, "prompt_tokens")
        comp = _tokens(comp_tokens, "comp_tokens")
        cache_read = _tokens(cache_read_tokens, "cache_read_tokens")
        cache_write = _tokens(cache_write_tokens, "cache_write_tokens")
        if cache_read + cache_write > prompt:
            raise ValueError(
                f"cache_read_tokens + cache_write_tokens ({cache_read + cache_write}) exceed prompt_tokens "
                f"({prompt}); prompt_tokens must include cached tokens"
            )
        entry = self._entry(model, provider)
        if isinstance(entry, Rates | _Tiered):
            return entry.cost(prompt, comp, cache_read, cache_write)
        if isinstance(entry, _Exact):
            return self._exact(model, provider, prompt, comp, cache_read, cache_write)
        self._count_unknown(model, provider, entry)
        return None

    def linear_rates(self, model: str, provider: str | None = None) -> Rates | None:
        """The model's per-token rates if its price is linear and not about to change, else ``None``.

        For callers that price many calls of one model themselves (the SDK's hot path); a ``None`` model
        still has to go through ``cost`` (which counts unknown models).
        """
        entry = self._entry(model, provider or None)
        return entry if isinstance(entry, Rates) and entry.expires == math.inf else None

    def tiered_rates(self, model: str, provider: str | None = None) -> tuple[tuple[int, ...], tuple[Rates, ...]] | None:
        """``(starts, regions)`` if the model's price is linear within tiers of input tokens and not about to
        change (region ``i`` prices calls whose prompt tokens lie in ``(starts[i-1], starts[i]]``), else ``None``.

        For callers that price many calls themselves (the compiled ingest path), as ``linear_rates``.
        """
        entry = self._entry(model, provider or None)
        if isinstance(entry, _Tiered) and entry.expires == math.inf:
            return entry.starts, entry.regions
        return None

    def knows(self, model: str, provider: str | None = None) -> bool:
        """Whether ``cost`` can price this model (does not count as an unknown lookup)."""
        return type(self._entry(model, provider or None)) is not _Unknown

    def stats(self) -> dict[str, int]:
        """A copy of ``unknown_models``, safe to read from another thread."""
        with self._lock:
            return dict(self.unknown_models)

    def _entry(self, model: str, provider: str | None) -> _Entry:
        key = (model, provider)
        entry = self._cache.get(key)
        if entry is None or (entry.expires != math.inf and time.time() >= entry.expires):
            entry = self._resolve(model, provider)
            if len(self._cache) >= MAX_CACHED_LOOKUPS:
                self._cache.clear()  # bounded: a flood of distinct names must not grow it (the usual few refill it)
            self._cache[key] = entry
        return entry

    def _resolve(self, model: str, provider: str | None) -> _Entry:
        override = self._overrides.get(model.lower())
        if override is not None:
            return override
        if not model:
            return _Unknown("empty model name")
        if not self._use_library:
            return _Unknown("not in the override table")
        return _derive(model, provider)

    def _exact(
        self, model: str, provider: str | None, prompt: int, comp: int, cache_read: int, cache_write: int
    ) -> float | None:
        try:
            calculation = _calc(model, provider, prompt, comp, cache_read, cache_write)
        except (LookupError, ValueError, ArithmeticError) as exc:
            log.warning("cannot price %s (%s): %s", model, provider, exc)
            return None
        return _round(float(calculation.total_price))

    def _count_unknown(self, model: str, provider: str | None, entry: _Unknown) -> None:
        with self._lock:
            seen = self.unknown_models.get(model)
            if seen is None and len(self.unknown_models) >= MAX_UNKNOWN_MODELS + (OVERFLOW in self.unknown_models):
                model, seen = OVERFLOW, self.unknown_models.get(OVERFLOW)
                if seen is None:
                    log.warning(
                        "more than %d models without a price: further ones are counted as %s",
                        MAX_UNKNOWN_MODELS,
                        OVERFLOW,
                    )
            self.unknown_models[model] = (seen or 0) + 1
        if not seen and model != OVERFLOW:
            where = f" (provider {provider!r})" if provider else ""
            log.warning("no price for model %r%s: cost_usd stays null (%s)", model, where, entry.reason)


_default_lock = threading.Lock()
_default: PriceTable | None = None


def default_table() -> PriceTable:
    """The process-wide table (library prices, no overrides) used by ``cost`` and by default tracers."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PriceTable()
    return _default


def cost(
    model: str,
    prompt_tokens: int | float | None,
    comp_tokens: int | float | None,
    provider: str | None = None,
    cache_read_tokens: int | float | None = 0,
    cache_write_tokens: int | float | None = 0,
) -> float | None:
    """The call's cost in USD from the default table, or ``None`` for an unknown model."""
    return default_table().cost(model, prompt_tokens, comp_tokens, provider, cache_read_tokens, cache_write_tokens)
