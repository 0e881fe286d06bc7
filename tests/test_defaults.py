"""Each default is defined once, in the configuration model: the store's, the worker's and the SDK's agree."""

from __future__ import annotations

import dataclasses

import msgspec

from tokentrace.api.embedded import embedded_settings
from tokentrace.api.stores.embedded import EmbeddedSettings
from tokentrace.config import Config
from tokentrace.devcluster.cluster import DevCluster
from tokentrace.processors.worker import WorkerSettings
from tokentrace.producers.transports.kafka import DEFAULT_TOPIC


def test_the_embedded_store_defaults_are_the_configs() -> None:
    assert EmbeddedSettings() == embedded_settings(Config())


def test_the_worker_defaults_are_the_configs() -> None:
    config = Config()
    derived = WorkerSettings.from_config(config)
    plain = WorkerSettings(bootstrap_servers=config.kafka.bootstrap_servers, redis_url=config.redis.url)
    ignored = {"alerts_config"}  # None by default: a worker built in code evaluates no rules
    for field in dataclasses.fields(WorkerSettings):
        if field.name not in ignored:
            assert getattr(plain, field.name) == getattr(derived, field.name), field.name


def test_a_changed_key_reaches_the_settings() -> None:
    config = msgspec.convert(
        {"storage": {"max_spans": 5, "trace_retention": "1h"}, "kafka": {"topic": "t", "partitions": 3}}, Config
    )
    store = embedded_settings(config)
    worker = WorkerSettings.from_config(config)
    assert (store.max_spans, store.trace_retention_ms) == (5, 3_600_000)
    assert (worker.topic, worker.partitions, worker.trace_retention_ms) == ("t", 3, 3_600_000)


def test_the_sdk_and_the_dev_cluster_use_the_configs_topic_and_partitions() -> None:
    assert Config().kafka.topic == DEFAULT_TOPIC
    assert DevCluster().partitions == Config().kafka.partitions


def test_the_core_and_sdk_fallbacks_agree_with_the_config() -> None:
    """Defaults that cannot import the config (the pure core, the light SDK) are pinned to it here."""
    from tokentrace.config import HTTPServerConfig, timeline_settings
    from tokentrace.core.timeline import TimelineSettings
    from tokentrace.producers.transports.http import MAX_BATCH

    assert TimelineSettings() == timeline_settings(Config())
    assert HTTPServerConfig().max_batch_size == MAX_BATCH
