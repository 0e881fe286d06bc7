"""Alert rules, silences and state shared through a real Redis by several evaluators and API replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.alerting.test_service import LATENCY_RULE, QuietSinks, status_of
from tests.core.alerts.fakes import FakeReader, ManualClock
from tokentrace.alerting import AlertService
from tokentrace.alerting.redis_shared import RedisAlertLedger, RedisRuleRepository
from tokentrace.alerting.repository import RepositoryConflict, Snapshot
from tokentrace.core.alerts import AlertRule

pytestmark = [pytest.mark.redis]

RULE = AlertRule("cost-spike", "total_cost", "gt", 10.0, window="1h", cooldown="1h")


@pytest.fixture
async def redis(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def service(redis: aioredis.Redis, reader: FakeReader, clock: ManualClock, sinks: QuietSinks) -> AlertService:
    """One process of the deployment: all of them share the Redis keys under one prefix."""
    return AlertService(
        reader,
        rules=[RULE],
        repository=RedisRuleRepository(redis, "t:"),
        ledger=RedisAlertLedger(redis, "t:"),
        clock=clock,
        sinks=sinks,
    )


async def test_two_evaluators_in_the_same_round_announce_an_episode_once(redis: aioredis.Redis) -> None:
    reader, clock = FakeReader(), ManualClock()
    sinks = [QuietSinks(), QuietSinks()]
    leaders = [service(redis, reader, clock, s) for s in sinks]
    reader.set("total_cost", 11.0)
    for _ in range(3):  # both evaluate every round, concurrently, as two workers during a rebalance
        clock.advance(60)
        await asyncio.gather(*(leader.evaluate_async() for leader in leaders))
        for leader in leaders:
            await leader.drain()
    assert sinks[0].sent + sinks[1].sent == [("cost-spike", "firing")]
    reader.set("total_cost", 1.0)
    clock.advance(60)
    await asyncio.gather(*(leader.evaluate_async() for leader in leaders))
    for leader in leaders:
        await leader.drain()
    assert sorted(sinks[0].sent + sinks[1].sent) == [("cost-spike", "firing"), ("cost-spike", "resolved")]

    replica = service(redis, FakeReader(), clock, QuietSinks())
    await replica.refresh()
    assert replica.firing_counts() == {("cost-spike", "warning"): 1}
    [listed] = replica.list_alerts()
    assert listed["state"] == "resolved" and listed["current_value"] == 1.0 and listed["last_fired"] is not None


async def test_a_new_leader_continues_the_episode_instead_of_announcing_it_again(redis: aioredis.Redis) -> None:
    reader, clock = FakeReader(), ManualClock()
    first, second = QuietSinks(), QuietSinks()
    reader.set("total_cost", 11.0)
    old = service(redis, reader, clock, first)
    await old.evaluate_async(clock.advance(60))
    await old.drain()
    new = service(redis, reader, clock, second)  # the old leader died; another worker takes over
    for _ in range(5):
        await new.evaluate_async(clock.advance(60))
    await new.drain()
    assert (first.sent, second.sent) == ([("cost-spike", "firing")], [])
    reader.set("total_cost", 1.0)
    await new.evaluate_async(clock.advance(60))
    await new.drain()
    assert second.sent == [("cost-spike", "resolved")]


async def test_replicas_share_rules_and_silences_and_never_lose_a_concurrent_create(redis: aioredis.Redis) -> None:
    clock = ManualClock()
    replicas = [service(redis, FakeReader(), clock, QuietSinks()) for _ in range(3)]
    bodies = [LATENCY_RULE.replace(b"model-latency-alert", f"rule-{i}".encode()) for i in range(12)]
    created = await asyncio.gather(*(replicas[i % 3].create(body) for i, body in enumerate(bodies)))
    assert len({c["rule_id"] for c in created}) == 12
    for replica in replicas:
        await replica.refresh()
        assert {a["name"] for a in replica.list_alerts()} == {"cost-spike"} | {f"rule-{i}" for i in range(12)}
    assert (await status_of(replicas[1].create(bodies[0])))[0] == 409
    await replicas[2].silence("rule-3", b'{"duration": "1h"}')
    await replicas[0].delete("rule-4")
    await replicas[1].refresh()
    listed = {a["name"]: a for a in replicas[1].list_alerts()}
    assert listed["rule-3"]["silenced"] is True and "rule-4" not in listed
    assert (await status_of(replicas[1].delete("rule-4")))[0] == 404


async def test_a_save_from_an_old_revision_is_a_conflict(redis: aioredis.Redis) -> None:
    repository = RedisRuleRepository(redis, "t:")
    loaded = await repository.load()
    await repository.save(loaded)
    with pytest.raises(RepositoryConflict):
        await repository.save(loaded)
    assert (await repository.load()).revision == 1
    assert isinstance(await repository.load(), Snapshot)
