"""Test 7, alerts: evaluated by one worker of the group, fire once (not once per worker, not again when the
leader dies), and every API replica shows the same rules, states and firing counts."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.alerting.receiver import Receiver
from tests.infra.kafka import KafkaCluster
from tests.infra.redis import RedisServer
from tests.processors.harness import Workers, make_spans, produce, wait_counted
from tokentrace.api.app import create_app
from tokentrace.api.distributed import distributed_context
from tokentrace.api.stores.redis_store import RedisStore
from tokentrace.config import load_config

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def _config_file(tmp_path: Path, kafka: KafkaCluster, redis: RedisServer, topic: str, hook: str) -> Path:
    path = tmp_path / "tokentrace.yml"
    path.write_text(
        f"kafka: {{bootstrap_servers: '{kafka.bootstrap}', topic: '{topic}', partitions: 4}}\n"
        f"redis: {{url: '{redis.url}'}}\n"
        "alerting: {interval: 1s}\n"
        "alerts:\n"
        "  - {name: traffic, metric: span_count, op: gt, threshold: 100, window: 1h, cooldown: 1h,\n"
        f"     delivery: {{type: http, url: '{hook}'}}}}\n"
    )
    return path


async def _alerts(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    response = await client.get("/alerts")
    assert response.status == 200, await response.text()
    return sorted(await response.json(), key=lambda a: a["name"])


@pytest.mark.slow
async def test_alerts_fire_once_across_workers_and_replicas_and_survive_the_leader(
    kafka_broker: KafkaCluster,
    redis_server: RedisServer,
    topic: str,
    workers: Workers,
    store: RedisStore,
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    async with Receiver() as receiver:
        config_path = _config_file(tmp_path, kafka_broker, redis_server, topic, receiver.url)
        workers.extra_args = ["--config", str(config_path)]
        for _ in range(3):
            workers.start()
        config = load_config(config_path)
        contexts = [await distributed_context(config) for _ in range(2)]
        replicas = [await aiohttp_client(create_app(ctx)) for ctx in contexts]
        try:
            # An API rule, created on one replica, evaluated by the workers, listed by the other.
            created = await replicas[0].post(
                "/alerts",
                data=json.dumps(
                    {
                        "name": "errors",
                        "metric": "span_count",
                        "op": "gt",
                        "threshold": 50,
                        "window": "1h",
                        "filter": {"model": "gpt-4o"},
                        "delivery": {"type": "http", "url": receiver.url},
                    }
                ),
            )
            assert created.status == 201, await created.text()
            assert [a["name"] for a in await _alerts(replicas[1])] == ["errors", "traffic"]

            await produce(kafka_broker.bootstrap, topic, make_spans(2000, random.Random(9)))
            await wait_counted(store, 2000, 90, workers)
            received = await receiver.wait_for(2, within_s=30)
            await asyncio.sleep(5)  # five more rounds: nothing repeats within the cooldown
            for victim in list(workers.alive())[:2]:  # the leader is among them for at least one of the kills
                victim.kill()
                await asyncio.sleep(10)  # the group's session timeout, a rebalance, rounds on the new leader
            assert sorted(r.json()["alert"] for r in received) == ["errors", "traffic"]
            assert len(receiver.requests) == 2, [r.json() for r in receiver.requests]
            assert {r.json()["status"] for r in receiver.requests} == {"firing"}

            listings = [await _alerts(replica) for replica in replicas]
            assert listings[0] == listings[1]
            assert [(a["name"], a["firing"], a["state"]) for a in listings[0]] == [
                ("errors", True, "firing"),
                ("traffic", True, "firing"),
            ]
            text = await (await replicas[1].get("/metrics/prometheus")).text()
            assert 'tokentrace_alert_firings_total{alert="traffic",level="warning"} 1.0' in text
            assert 'tokentrace_alert_firings_total{alert="errors",level="warning"} 1.0' in text
        finally:
            for ctx in contexts:
                if ctx.alerts is not None:
                    await ctx.alerts.aclose()
                await ctx.store.close()
