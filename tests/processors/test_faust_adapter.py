"""Each faust-streaming / aiokafka internal the worker relies on, checked against the installed releases.

A failure here means an upgrade of faust-streaming or aiokafka changed an internal that
tokentrace.processors.faust_adapter reaches: the message names the library and its version.
"""

from __future__ import annotations

import aiokafka
import faust
import pytest

from tokentrace.core.compat import IncompatibleLibrary, installed_version
from tokentrace.processors import faust_adapter

FAUST = f"faust-streaming {installed_version('faust-streaming')}"
AIOKAFKA = f"aiokafka {installed_version('aiokafka')}"


@pytest.fixture
def app() -> faust.App:
    return faust.App("tokentrace-adapter-probe", broker="kafka://127.0.0.1:1", store="memory://")


def test_the_hooks_checked_at_worker_start_exist() -> None:
    faust_adapter.check()


def test_a_table_value_type_names_its_codec(app: faust.App) -> None:
    value_type = faust_adapter.value_type_with_codec("raw")
    table = app.Table("probe", value_type=value_type)
    assert table.value_serializer == "raw", f"{FAUST}: a value type's _options.serializer is no longer read"
    assert value_type.from_data({"a": 1}) == {"a": 1}  # type: ignore[attr-defined]


async def test_the_consumer_keeps_its_committed_offsets(app: faust.App) -> None:
    consumer = app.consumer
    assert isinstance(getattr(consumer, "_committed_offset", None), dict), f"{FAUST}: Consumer._committed_offset"
    assert faust_adapter.committed_offset(consumer, "t", 0) is None
    consumer._committed_offset[faust.types.TP("t", 0)] = 41
    assert faust_adapter.committed_offset(consumer, "t", 0) == 41


def test_a_memory_store_keeps_each_keys_partition(app: faust.App) -> None:
    store = app.Table("probe").data
    assert isinstance(getattr(store, "_key_partition", None), dict), f"{FAUST}: memory Store._key_partition"
    faust_adapter.remember_partition(store, b"k", 3)
    assert store._key_partition == {b"k": 3}


async def test_aiokafka_reads_the_fetch_wait_from_the_attribute_the_adapter_sets() -> None:
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=123)
    try:
        assert getattr(consumer, "_fetch_max_wait_ms", None) == 123, f"{AIOKAFKA}: AIOKafkaConsumer._fetch_max_wait_ms"
    finally:
        await consumer.stop()


def test_the_consumer_factory_is_wrapped_once() -> None:
    thread = faust.transport.drivers.aiokafka.AIOKafkaConsumerThread
    assert callable(getattr(thread, "_create_worker_consumer", None)), f"{FAUST}: _create_worker_consumer"
    faust_adapter.use_fetch_wait(lambda app: None)
    wrapped = thread._create_worker_consumer
    faust_adapter.use_fetch_wait(lambda app: 77)
    assert thread._create_worker_consumer is wrapped
    assert faust_adapter._fetch_wait_ms(faust.App("probe")) == 77  # the newest function is the one used


def test_a_missing_internal_is_an_error_naming_the_library() -> None:
    with pytest.raises(IncompatibleLibrary, match=r"^faust-streaming \S+ is not compatible") as raised:
        faust_adapter.committed_offset(object(), "t", 0)
    assert ">=0.11,<0.16" in str(raised.value)
    with pytest.raises(IncompatibleLibrary, match="faust-streaming"):
        faust_adapter.remember_partition(object(), b"k", 0)


async def test_the_fetch_flow_of_a_partition_is_read_and_a_paused_one_resumed(app: faust.App) -> None:
    consumer = app.consumer
    tp = faust.types.TP("t", 2)
    consumer.pause_partitions([tp])
    flow = faust_adapter.fetch_flow(app, "t", 2)
    assert flow["paused"] is True and flow["active"] is False, f"{FAUST}: Consumer._paused/_active_partitions"
    assert {"buffer_full", "read_offset", "committed", "consumer_flow", "app_flow", "in_recovery"} <= flow.keys()
    faust_adapter.resume_fetching(app, "t", 2)
    flow = faust_adapter.fetch_flow(app, "t", 2)
    assert flow["paused"] is False and flow["active"] is True


async def test_aiokafka_keeps_a_fetch_position_per_assigned_partition() -> None:
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    tp = aiokafka.TopicPartition("t", 0)
    try:
        consumer._subscription.assign_from_user([tp])
        state = consumer._subscription.subscription.assignment.state_value(tp)
        assert state.has_valid_position is False and state.paused is False, f"{AIOKAFKA}: TopicPartitionState"
        state.seek(5)
        assert state.position == 5
    finally:
        await consumer.stop()
