# Type stubs for the compiled module built from native/ (see tokentrace/core/native.py).
from collections.abc import Callable, Iterable, Sequence
from typing import Any

class AggregateKernel:
    def __init__(
        self, latency_bounds: Sequence[float], prompt_bounds: Sequence[float], multiplier: float, offset: float
    ) -> None: ...
    def add_many(self, aggregate: object, spans: object) -> bool: ...

class BucketKernel:
    def __init__(
        self, sep: str, overflow: str, score_key: str, new_aggregate: Callable[[], object], aggregates: AggregateKernel
    ) -> None: ...
    def add_many(
        self, state: object, spans: object, max_attribute_keys: int, max_attribute_values: int, max_series: int
    ) -> bool: ...
    def add_batches(
        self,
        state: object,
        segments: list[tuple[WireBatch, list[int]]],
        max_attribute_keys: int,
        max_attribute_values: int,
        max_series: int,
    ) -> None: ...
    def add_batch_to_states(
        self,
        batch: WireBatch,
        targets: Sequence[tuple[object, list[int]]],
        max_attribute_keys: int,
        max_attribute_values: int,
        max_series: int,
    ) -> None: ...

class Backlog:
    def __init__(
        self, kernel: BucketKernel, versions: dict[tuple[int, int], int], hour_ms: int, day_ms: int
    ) -> None: ...
    def add(self, batch: WireBatch, plan: list[tuple[int, int, list[int]]]) -> int: ...
    def add_whole(self, batch: WireBatch, kind: int, size: int, hours: list[int]) -> int: ...
    def add_settled(
        self,
        batch: WireBatch,
        kind: int,
        size: int,
        hot_from: int,
        fine: dict[int, Any],
        coarse: dict[int, Any],
        frozen: type,
    ) -> tuple[int, list[tuple[int, list[int], list[int], list[int], int]]]: ...
    def queued(self, kind: int, start: int) -> int: ...
    def __len__(self) -> int: ...
    def memory(self) -> int: ...
    def fullest(self, holding: int | None = None) -> list[tuple[int, int, int]]: ...
    def count_into(
        self,
        kind: int,
        start: int,
        raw: bytes | memoryview | object,
        max_attribute_keys: int,
        max_attribute_values: int,
        max_series: int,
    ) -> bytes | None: ...
    def discard(self, kind: int, start: int) -> int: ...
    def clear(self) -> None: ...

class WireBatch:
    def __len__(self) -> int: ...
    def touches(self, trace_ids: list[str]) -> bool: ...
    def buckets(self) -> list[tuple[int, int]]: ...
    def split_settled(
        self, size: int, hot_from: int, fine: dict[int, Any], coarse: dict[int, Any], frozen: type
    ) -> tuple[list[tuple[int, int]], list[tuple[int, list[int], list[int], list[int], int]]]: ...
    def lines(self) -> bytes: ...
    def starts(self) -> list[int]: ...
    def trace_ids(self) -> set[str]: ...

def decode_batch(
    payload: bytes,
    oldest_ms: int,
    latest_ms: int,
    bucket_ms: int,
    horizon_ms: int,
    priced: bool,
    max_tokens: int,
    max_cost: float,
    max_latency: float,
    max_score: float,
    sep: str,
    live: bool = False,
) -> WireBatch | None: ...
def compile_spans(
    spans: list[Any],
    oldest_ms: int,
    latest_ms: int,
    bucket_ms: int,
    horizon_ms: int,
    priced: bool,
    max_tokens: int,
    max_cost: float,
    max_latency: float,
    max_score: float,
    sep: str,
    *,
    live: bool = False,
) -> tuple[bytes, WireBatch] | None: ...
def compile_json(
    body: bytes,
    max_spans: int,
    admitted: set[str],
    arrival_ms: int,
    oldest_ms: int,
    latest_ms: int,
    rates: dict[str, dict[str | None, Any]] | None,
    scale: float,
    caps: object,
    cache_keys: list[str],
    bucket_ms: int,
    max_tokens: int,
    max_cost: float,
    max_latency: float,
    max_score: float,
    sep: str,
) -> tuple[bytes, WireBatch] | None: ...
def register_span(sample: object) -> bool: ...
def span_field(span: object, name: str) -> Any: ...
def check_span(span: object, max_tokens: int, max_cost: float, max_latency: float, max_score: float) -> bool: ...
def compiled_post_init(
    checked: Callable[[Any], None],
    globals: dict[str, Any],
    max_tokens: int,
    max_cost: float,
    max_latency: float,
    max_score: float,
) -> Callable[[Any], None]: ...
def canonical_ms(text: object) -> int | None: ...
def stamp(span: object) -> int | None: ...
def trace_index_commands(
    spans: object, lines: bytes, trace_prefix: bytes, listing: bytes, per_call: int, per_trace: int
) -> list[tuple[bytes, int]] | None: ...
def route_spans(
    spans: object,
    oldest_ms: int,
    latest_ms: int,
    bucket_ms: int,
    horizon_ms: int,
    priced: bool,
    key_of: Callable[[int], bytes],
) -> tuple[dict[bytes, list[Any]], list[tuple[Any, int]]] | None: ...
def prepare_spans(
    spans: object,
    oldest_ms: int,
    latest_ms: int,
    rates: dict[str, dict[str | None, tuple[float, float, float, float, float] | None]] | None,
    scale: float,
    caps: object,
    cache_keys: list[str],
) -> tuple[list[int], list[int]] | None: ...
def add_to_traces(
    table: dict[str, Any], make: object, payload: bytes, batch: WireBatch, horizon: int | None
) -> list[Any]: ...
def traces_take(table: dict[str, Any], batch: WireBatch, horizon: int | None) -> int: ...
def crc32(data: Any, value: int = 0) -> int: ...
def newest_spans(lists: list[list[Any]], limit: int) -> list[Any] | None: ...
def oldest_traces(order: Iterable[Any], excess: int, batch: WireBatch) -> tuple[int, int] | None: ...
def match_spans(
    spans: list[Any], model: str | None, caller: str | None, status: str | None, attributes: Sequence[tuple[str, str]]
) -> bool | None: ...
def untracked_zeros(n: int) -> list[int]: ...
def untrack_state(state: object) -> int: ...
