"""Alert rules, silences and state in Redis, shared by every worker and API replica of a deployment.

* ``RedisRuleRepository``: the API's rules and silences as one snapshot with a revision; a save based on
  an older revision is refused (``RepositoryConflict``), so two replicas creating rules at once never
  lose one.
* ``RedisAlertLedger``: rule states (``revision:json`` per rule), firing counts and the evaluator's
  delivery stats; state writes are one compare-and-set script, firing counts move with them.

Keys (under the deployment's prefix, default ``tt:``): ``alerts:rules`` (hash: ``rev``, ``data``),
``alerts:state``, ``alerts:firings`` (field ``name<US>level``) and ``alerts:delivery`` (hashes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from tokentrace.alerting.delivery import DeliveryStats
from tokentrace.alerting.ledger import LedgerView, StateWrite
from tokentrace.alerting.repository import RepositoryConflict, Snapshot
from tokentrace.alerting.service import AlertService
from tokentrace.config import Config
from tokentrace.core.alerts import MetricReader, RuleState
from tokentrace.core.alerts.rules import rules_from_config

__all__ = ["RedisAlertLedger", "RedisRuleRepository", "shared_alert_service"]

_SEP = "\x1f"

_SAVE_SNAPSHOT = """
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if rev ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'rev', rev + 1, 'data', ARGV[2])
return 1
"""

_WRITE_STATES = """
local won = {}
local i = 1
while i <= #ARGV do
  local name, expected, data, started = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  local current = redis.call('HGET', KEYS[1], name)
  local rev = 0
  if current then rev = tonumber(string.match(current, '^(%d+):')) end
  if rev == expected then
    redis.call('HSET', KEYS[1], name, (rev + 1) .. ':' .. data)
    if started ~= '' then redis.call('HINCRBY', KEYS[2], started, 1) end
    won[#won + 1] = name
  end
  i = i + 4
end
return won
"""

_state_decoder = msgspec.json.Decoder(RuleState)
_deliveries_decoder = msgspec.json.Decoder(DeliveryStats)
_snapshot_decoder = msgspec.json.Decoder(Snapshot)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.rules = f"{prefix}alerts:rules"
        self.state = f"{prefix}alerts:state"
        self.firings = f"{prefix}alerts:firings"
        self.delivery = f"{prefix}alerts:delivery"


class RedisRuleRepository:
    """API rules and silences in one Redis hash, saved with compare-and-set on its revision."""

    shared = True

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._keys = _Keys(prefix)
        self._save_script: Any = redis.register_script(_SAVE_SNAPSHOT)

    async def load(self) -> Snapshot:
        revision, data = await self._redis.hmget(self._keys.rules, ["rev", "data"])
        if data is None:
            return Snapshot(revision=int(revision or 0))
        try:
            snapshot = _snapshot_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"redis {self._keys.rules}: cannot read stored alert rules: {exc}") from None
        return msgspec.structs.replace(snapshot, revision=int(revision or 0))

    async def save(self, snapshot: Snapshot) -> None:
        data = msgspec.json.encode(msgspec.structs.replace(snapshot, revision=snapshot.revision + 1))
        if not await self._save_script(keys=[self._keys.rules], args=[snapshot.revision, data]):
            raise RepositoryConflict(f"{self._keys.rules} changed since revision {snapshot.revision}")


class RedisAlertLedger:
    """``AlertLedger`` over Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._keys = _Keys(prefix)
        self._write_script: Any = redis.register_script(_WRITE_STATES)

    async def read(self) -> LedgerView:
        keys = self._keys
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.state)
            pipe.hgetall(keys.firings)
            pipe.hgetall(keys.delivery)
            raw_states, raw_firings, raw_deliveries = await pipe.execute()
        states: dict[str, tuple[int, RuleState]] = {}
        for name, value in raw_states.items():
            revision, _, data = _text(value).partition(":")
            states[_text(name)] = (int(revision), _state_decoder.decode(data))
        firings: dict[tuple[str, str], int] = {}
        for field, count in raw_firings.items():
            name, _, level = _text(field).partition(_SEP)
            firings[(name, level)] = int(count)
        deliveries = {_text(name): _deliveries_decoder.decode(value) for name, value in raw_deliveries.items()}
        return LedgerView(states, firings, deliveries)

    async def write(self, writes: Sequence[StateWrite]) -> set[str]:
        if not writes:
            return set()
        args: list[Any] = []
        for write in writes:
            started = "" if write.started_level is None else f"{write.name}{_SEP}{write.started_level}"
            args += (write.name, write.revision, msgspec.json.encode(write.state), started)
        won = await self._write_script(keys=[self._keys.state, self._keys.firings], args=args)
        return {_text(name) for name in won}

    async def publish_deliveries(self, stats: Mapping[str, DeliveryStats]) -> None:
        if stats:
            await self._redis.hset(
                self._keys.delivery, mapping={name: msgspec.json.encode(s) for name, s in stats.items()}
            )

    async def forget(self, names: Sequence[str]) -> None:
        if names:
            await self._redis.hdel(self._keys.state, *names)
            await self._redis.hdel(self._keys.delivery, *names)


def shared_alert_service(config: Config, redis: aioredis.Redis, prefix: str, reader: MetricReader) -> AlertService:
    """The deployment's alert service over Redis: config rules plus the shared API rules, silences and state.

    The leading worker evaluates with it (its ``reader`` sees the view); API replicas list, create, silence
    and delete through the same keys (they never evaluate, so their reader is not used).
    """
    return AlertService(
        reader,
        rules=rules_from_config(config.alerts),
        repository=RedisRuleRepository(redis, prefix),
        ledger=RedisAlertLedger(redis, prefix),
        external_url=config.alerting.external_url or "http://localhost:9090",
    )
