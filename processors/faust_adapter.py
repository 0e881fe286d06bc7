"""Every internal of faust-streaming (and of the aiokafka consumer under it) that the worker relies on.

Faust has no public API for these, so the worker reaches them here and nowhere else; ``check()`` runs when a
worker app is built and fails with :class:`IncompatibleLibrary` naming the library when an upgrade removed one
(pyproject.toml bounds both libraries to the tested range). tests/processors/test_faust_adapter.py checks each
against the installed releases.

* ``fetch wait``: Faust hard-codes the consumer's ``fetch_max_wait_ms`` (1500 ms); its consumer factory
  ``AIOKafkaConsumerThread._create_worker_consumer`` is wrapped to set aiokafka's ``_fetch_max_wait_ms``
  (read when the consumer starts).
* ``committed offset``: the consumer's ``_committed_offset`` map (what Faust last committed per partition).
* ``key partition``: a memory store's ``_key_partition`` map, which a custom changelog restore must fill.
* ``value codec``: a table's value type names its codec in a nested ``_options.serializer`` (read by
  ``Collection._serializer_from_type``; anything else silently means JSON).
* ``fetch flow``: what decides whether Faust fetches a partition (its consumer's active, paused and buffered
  partition sets, read offsets, flow events; aiokafka's fetch position), read to explain a partition that
  stops arriving, and Faust's ``resume_partitions`` to put one back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from faust.tables.base import Collection
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from tokentrace.core.compat import IncompatibleLibrary

__all__ = [
    "check",
    "committed_offset",
    "fetch_flow",
    "remember_partition",
    "resume_fetching",
    "use_fetch_wait",
    "value_type_with_codec",
]

FAUST = "faust-streaming"
FAUST_RANGE = ">=0.11,<0.16"

_CONSUMER_THREAD = faust_aiokafka.AIOKafkaConsumerThread
_PATCHED = "_tokentrace_fetch_wait"


def _faust_default(app: faust.App) -> int | None:
    return None


_fetch_wait_ms: Callable[[faust.App], int | None] = _faust_default


def value_type_with_codec(codec: str) -> type:
    """A table value type that makes Faust use ``codec`` and passes decoded values through."""

    class Value:
        class _options:
            serializer = codec

        @classmethod
        def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
            return data

    Value.__qualname__ = Value.__name__ = f"EntryValue[{codec}]"
    return Value


def use_fetch_wait(fetch_wait_ms: Callable[[faust.App], int | None]) -> None:
    """Give each Kafka consumer Faust creates from now on the fetch wait ``fetch_wait_ms(app)`` returns (``None``:
    Faust's). The consumer factory is wrapped once per process; a later call replaces the function."""
    global _fetch_wait_ms
    _fetch_wait_ms = fetch_wait_ms
    if getattr(_CONSUMER_THREAD, _PATCHED, False):
        return
    create = _CONSUMER_THREAD._create_worker_consumer

    def create_with_fetch_wait(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        wait = _fetch_wait_ms(self.app)
        if wait is not None:
            consumer._fetch_max_wait_ms = wait
        return consumer

    _CONSUMER_THREAD._create_worker_consumer = create_with_fetch_wait  # type: ignore[method-assign]
    setattr(_CONSUMER_THREAD, _PATCHED, True)


def committed_offset(consumer: Any, topic: str, partition: int) -> int | None:
    """The offset Faust last committed for ``topic``/``partition`` (``None`` before its first commit)."""
    committed: dict[TP, int] | None = getattr(consumer, "_committed_offset", None)
    if committed is None:
        raise IncompatibleLibrary(FAUST, "its Consumer no longer keeps _committed_offset", FAUST_RANGE)
    return committed.get(TP(topic, partition))


def remember_partition(store: Any, key: Any, partition: int) -> None:
    """Record which changelog partition ``key`` of a memory store came from (as Faust's own restore does)."""
    partitions: dict[Any, int] | None = getattr(store, "_key_partition", None)
    if partitions is None:
        raise IncompatibleLibrary(FAUST, "its memory Store no longer keeps _key_partition", FAUST_RANGE)
    partitions[key] = partition


def fetch_flow(app: faust.App, topic: str, partition: int) -> dict[str, object]:
    """Everything that decides whether ``topic``/``partition`` is fetched now, for a log line (read-only)."""
    consumer: Any = app.consumer
    tp = TP(topic, partition)
    try:
        active = consumer._active_partitions
        flow: dict[str, object] = {
            "assigned": _assigned(consumer, tp),
            "active": active is None or tp in active,
            "paused": tp in consumer._paused_partitions,
            "buffer_full": tp in consumer._buffered_partitions,
            "read_offset": consumer._read_offset.get(tp),
            "committed": consumer._committed_offset.get(tp),
            "consumer_flow": consumer.flow_active,
            "app_flow": app.flow_control.is_active(),
            "in_recovery": app.in_recovery,
            "rebalancing": app.rebalancing,
        }
    except AttributeError as exc:
        raise IncompatibleLibrary(FAUST, f"its Consumer's fetch state changed ({exc})", FAUST_RANGE) from None
    kafka = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    state = None
    if kafka is not None:
        try:
            state = kafka._subscription.subscription.assignment.state_value(tp)
        except AttributeError:
            state = None
    if state is not None:
        flow["fetch_position"] = state.position if state.has_valid_position else None
        flow["fetch_paused"] = state.paused
    return flow


def _assigned(consumer: Any, tp: TP) -> bool | None:
    try:
        return tp in consumer.assignment()
    except Exception:  # not started (or stopping): unknown
        return None


def resume_fetching(app: faust.App, topic: str, partition: int) -> None:
    """Put ``topic``/``partition`` back among the partitions Faust fetches (a no-op where it is already)."""
    app.consumer.resume_partitions([TP(topic, partition)])


def check() -> None:
    """Raise :class:`IncompatibleLibrary` naming faust-streaming when a hook above is gone (called when a worker
    app is built; the instance attributes are checked where they are used, and by the adapter's tests)."""
    if not callable(getattr(_CONSUMER_THREAD, "_create_worker_consumer", None)):
        raise IncompatibleLibrary(FAUST, "AIOKafkaConsumerThread._create_worker_consumer is gone", FAUST_RANGE)
    if not callable(getattr(Collection, "_serializer_from_type", None)):
        raise IncompatibleLibrary(FAUST, "Collection._serializer_from_type (table value codecs) is gone", FAUST_RANGE)
