"""What happens to a decoded batch before it is accepted: timestamps, time bounds, prices.

A batch is accepted whole or rejected whole with the index and field at fault, so a client never has to
guess which of its spans were counted.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from tokentrace.core import limits, native
from tokentrace.core.buckets import SEP
from tokentrace.core.limits import text_limit_error
from tokentrace.core.span import MAX_COST_USD, MAX_LATENCY_MS, MAX_SCORE, MAX_TOKENS, Span
from tokentrace.core.timefmt import format_duration, format_ms, parse_rfc3339_ms

if TYPE_CHECKING:
    from tokentrace._native import WireBatch

__all__ = [
    "CACHE_READ_ATTRIBUTE",
    "CACHE_WRITE_ATTRIBUTE",
    "Pricer",
    "SpanRejected",
    "compile_body",
    "prepare_batch",
    "prepare_spans",
]

#: Attributes (OpenTelemetry GenAI names) carrying cached prompt tokens, priced at the cache rates.
CACHE_READ_ATTRIBUTE = "gen_ai.usage.cache_read_input_tokens"
CACHE_WRITE_ATTRIBUTE = "gen_ai.usage.cache_creation_input_tokens"


class _TextCaps(NamedTuple):
    """The caps of ``core.limits`` as the compiled ``prepare_spans`` reads them."""

    label: int
    name: int
    id: int
    error: int
    attributes: int
    attribute_key: int
    attribute_value: int
    attributes_chars: int


_CAPS = _TextCaps(
    limits.MAX_LABEL_CHARS,
    limits.MAX_NAME_CHARS,
    limits.MAX_ID_CHARS,
    limits.MAX_ERROR_CHARS,
    limits.MAX_ATTRIBUTES,
    limits.MAX_ATTRIBUTE_KEY_CHARS,
    limits.MAX_ATTRIBUTE_VALUE_CHARS,
    limits.MAX_ATTRIBUTES_CHARS,
)
_CACHE_KEYS = [CACHE_READ_ATTRIBUTE, CACHE_WRITE_ATTRIBUTE]
#: ``PriceTable.cost`` rounds to 1e-10 USD.
_PRICE_SCALE = 1e10
#: A model's linear rates by model and provider (None: it has none), as ``PriceTable.linear_rates`` gives them.
_Linear = tuple[float, float, float, float, float]
#: Rates tiered by input tokens: the tier starts and each region's linear rates.
_Tiers = tuple[tuple[int, ...], tuple[_Linear, ...]]
_Rates = dict[str, dict[str | None, _Linear | _Tiers | None]]
_RATES: weakref.WeakKeyDictionary[Pricer, _Rates] = weakref.WeakKeyDictionary()

#: Length of a normalised timestamp, ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (years 1000 to 9999).
_NORMALISED = 24


class Pricer(Protocol):
    """Anything that prices a call: ``None`` when the model is unknown."""

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        comp_tokens: int,
        provider: str | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float | None: ...


class SpanRejected(ValueError):
    """A span of the batch cannot be accepted; ``reason`` is a short label for counters."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _int_attribute(span: Span, key: str) -> int:
    value = span.attributes.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def prepare_batch(
    spans: Sequence[Span],
    arrival_ms: int,
    pricer: Pricer | None,
    oldest_allowed_ms: int,
    max_future_ms: int,
) -> list[int]:
    """Stamp, bound-check and price ``spans`` in place; raise SpanRejected naming the first bad span.

    - a span with text over a cap of ``core.limits`` (a 10 MB model name) is rejected naming the field;
    - a span without timestamps counts at its arrival time;
    - a span that started before ``oldest_allowed_ms`` (outside aggregate retention), or that starts or
      ends more than ``max_future_ms`` after arrival (clock skew; ``ended_at`` as given or as derived from
      ``started_at`` and ``latency_ms``), is rejected rather than mis-bucketed or kept as a years-long trace;
    - a span without ``cost_usd`` is priced from the table; it stays ``None`` for an unknown model or
      when only ``total_tokens`` is known (the split between input and output decides the price).

    Returns the time each span counts at (``span_time_ms``). Spans after a rejected one are left as they were.

    The compiled ``prepare_spans`` does the checks and stamps of the usual batch (native/src/prepare.rs) and
    names the spans to price; anything else it leaves, having stamped only spans this code would have stamped
    the same, to the loop below. (When the pricer refuses a span's tokens, the spans after it are stamped too.)
    """
    compiled = native.prepare_spans
    if compiled is not None and type(spans) is list:
        rates = None if pricer is None else _linear_rates(pricer)
        latest = arrival_ms + max_future_ms
        prepared = compiled(spans, oldest_allowed_ms, latest, rates, _PRICE_SCALE, _CAPS, _CACHE_KEYS)
        if prepared is not None:
            starts, to_price = prepared
            if to_price:
                assert pricer is not None and rates is not None
                _price_rest(pricer, rates, spans, to_price)
            return starts
    return [
        _prepare(index, span, arrival_ms, pricer, oldest_allowed_ms, max_future_ms) for index, span in enumerate(spans)
    ]


def compile_body(
    body: bytes,
    max_spans: int,
    admitted: set[str],
    arrival_ms: int,
    pricer: Pricer | None,
    oldest_allowed_ms: int,
    max_future_ms: int,
    bucket_ms: int,
) -> tuple[bytes, WireBatch] | None:
    """A ``POST /spans`` body's log record and compiled batch, as ``compile_spans`` makes them (``live``) of the
    spans ``decode_json_spans`` decodes of it once ``prepare_batch`` stamped and priced them, in one compiled
    pass over its bytes (native/src/json_batch.rs): no ``Span`` object.

    None unless the body is the usual one: at most ``max_spans`` spans in the SDKs' form, each accepted by
    ``prepare_batch`` and priced from rates learnt before, none of a series outside ``admitted`` (the label
    caps' series, which ``LabelCaps.admit`` leaves as they are). The caller then decodes and prepares the
    spans in Python, which says what is wrong with a body it refuses.
    """
    compiled = native.compile_json
    if compiled is None:
        return None
    rates = None if pricer is None else _linear_rates(pricer)
    return compiled(
        body,
        max_spans,
        admitted,
        arrival_ms,
        oldest_allowed_ms,
        arrival_ms + max_future_ms,
        rates,
        _PRICE_SCALE,
        _CAPS,
        _CACHE_KEYS,
        bucket_ms,
        MAX_TOKENS,
        float(MAX_COST_USD),
        float(MAX_LATENCY_MS),
        float(MAX_SCORE),
        SEP,
    )


def prepare_spans(
    spans: Sequence[Span],
    arrival_ms: int,
    pricer: Pricer | None,
    oldest_allowed_ms: int,
    max_future_ms: int,
) -> list[int | SpanRejected]:
    """``prepare_batch`` span by span, never raising for one span: per span, the time it counts at or its
    rejection (the error ``prepare_batch`` would raise for it alone, but naming its index in ``spans``).

    A ValueError that is not a SpanRejected (a timestamp that cannot be read) is a rejection for reason
    ``"invalid"``.
    """
    outcomes: list[int | SpanRejected] = []
    for index, span in enumerate(spans):
        try:
            outcomes.append(_prepare(index, span, arrival_ms, pricer, oldest_allowed_ms, max_future_ms))
        except SpanRejected as exc:
            outcomes.append(exc)
        except ValueError as exc:
            outcomes.append(SpanRejected(f"span {index}: {exc}", "invalid"))
    return outcomes


def _prepare(index: int, span: Span, arrival_ms: int, pricer: Pricer | None, oldest_ms: int, max_future_ms: int) -> int:
    """Stamp, bound-check and price one span; the time it counts at. Raises SpanRejected."""
    too_long = text_limit_error(span)
    if too_long is not None:
        raise SpanRejected(f"span {index}: {too_long}", "too_long")
    at = span.stamp(arrival_ms)
    if at < oldest_ms:
        raise SpanRejected(
            f"span {index}: started_at {span.started_at} is older than the aggregate retention "
            f"(oldest accepted: {format_ms(oldest_ms)})",
            "too_old",
        )
    latest = arrival_ms + max_future_ms
    if at > latest:
        raise SpanRejected(
            f"span {index}: started_at {span.started_at} is more than "
            f"{format_duration(max_future_ms / 1000)} in the future (check the sender's clock)",
            "future",
        )
    ended = span.ended_at  # stamped: normalised, so fixed-width text compares as time does
    if (
        ended is not None
        and (ended > format_ms(latest) or len(ended) != _NORMALISED)
        and parse_rfc3339_ms(ended) > latest
    ):
        raise SpanRejected(
            f"span {index}: ended_at {ended} is more than {format_duration(max_future_ms / 1000)} in the future "
            "(check the sender's clock, or the latency given with started_at)",
            "future",
        )
    priceable = span.prompt_tokens is not None or span.comp_tokens is not None
    if span.cost_usd is None and pricer is not None and priceable:
        try:
            span.cost_usd = _price(pricer, span)
        except ValueError as exc:
            raise SpanRejected(f"span {index}: {exc}", "invalid") from None
    return at


def _linear_rates(pricer: Pricer) -> _Rates:
    """The linear rates ``pricer`` gave so far, for the compiled pricing (kept while the pricer lives)."""
    try:
        rates = _RATES.get(pricer)
        if rates is None:
            rates = _RATES[pricer] = {}
    except TypeError:  # a pricer that cannot be weakly referenced: no rates kept, the pricer prices
        return {}
    return rates


def _price_rest(pricer: Pricer, rates: _Rates, spans: Sequence[Span], indices: list[int]) -> None:
    """Price ``spans[i]`` for ``i`` in ``indices`` with the pricer (none has cached-token attributes), and learn
    each model's rates, linear or tiered by input tokens, if it has any, for the compiled pricing of later
    batches."""
    cost = pricer.cost
    linear = getattr(pricer, "linear_rates", None)
    tiered = getattr(pricer, "tiered_rates", None)
    for index in indices:
        span = spans[index]
        provider = span.provider or None
        try:
            span.cost_usd = cost(
                span.model, int(span.prompt_tokens or 0), int(span.comp_tokens or 0), provider=provider
            )
        except ValueError as exc:
            raise SpanRejected(f"span {index}: {exc}", "invalid") from None
        by_provider = rates.setdefault(span.model, {})
        if provider not in by_provider:
            by_provider[provider] = _compiled_rates(span.model, provider, linear, tiered)


def _fields(rates: Any) -> _Linear:
    return (rates.per_call, rates.input, rates.output, rates.cache_read, rates.cache_write)


def _compiled_rates(model: str, provider: str | None, linear: Any, tiered: Any) -> _Linear | _Tiers | None:
    """A model's rates as the compiled pricing takes them: ``Rates``' five fields, or ``(starts, regions of
    five fields)`` for prices tiered by input tokens; None when the pricer must price every call."""
    found = linear(model, provider) if linear is not None else None
    if found is not None:
        return _fields(found)
    tiers = tiered(model, provider) if tiered is not None else None
    if tiers is not None:
        starts, regions = tiers
        return (tuple(starts), tuple(_fields(region) for region in regions))
    return None


def _price(pricer: Pricer, span: Span) -> float | None:
    return pricer.cost(
        span.model,
        int(span.prompt_tokens or 0),
        int(span.comp_tokens or 0),
        provider=span.provider or None,
        cache_read_tokens=_int_attribute(span, CACHE_READ_ATTRIBUTE),
        cache_write_tokens=_int_attribute(span, CACHE_WRITE_ATTRIBUTE),
    )
