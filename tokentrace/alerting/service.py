"""The alert service: rules from config, code and the API; their state; silences; the evaluation timer.

The HTTP layer calls :meth:`AlertService.list_alerts`, :meth:`~AlertService.create`,
:meth:`~AlertService.silence` and :meth:`~AlertService.delete`; failures raise :class:`AlertError` with
the HTTP status to answer. :meth:`~AlertService.run` evaluates every ``interval_s`` off the request path
and hands notifications to the background :class:`Dispatcher`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TextIO, TypeVar

import msgspec

from tokentrace.alerting.delivery import DeliveryStats, Dispatcher, RetryPolicy
from tokentrace.alerting.errors import AlertError
from tokentrace.alerting.ledger import AlertLedger, StateWrite
from tokentrace.alerting.repository import (
    MemoryRuleRepository,
    RepositoryConflict,
    RuleRepository,
    Snapshot,
    StoredRule,
)
from tokentrace.alerting.sinks import Sink, SinkFactory
from tokentrace.core.alerts import (
    DEFAULT_COOLDOWN_S,
    AlertRule,
    Delivery,
    Evaluation,
    InvalidRule,
    MetricReader,
    Notification,
    RuleState,
    StdoutDelivery,
    decode_rule,
)
from tokentrace.core.alerts.durations import duration_text, seconds
from tokentrace.core.alerts.engine import Round
from tokentrace.core.alerts.rules import describe_validation_error
from tokentrace.core.timefmt import format_ms, now_ms

__all__ = ["AlertService", "RuleSource"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Attempts at a change of a shared repository that other processes keep changing first.
_MAX_CONFLICTS = 20

RuleSource = Literal["config", "api"]


class _Entry(msgspec.Struct, frozen=True):
    rule_id: str
    rule: AlertRule
    source: RuleSource
    created_ms: int | None = None


class _SilenceRequest(msgspec.Struct, forbid_unknown_fields=True):
    duration: str | float


_silence_decoder = msgspec.json.Decoder(_SilenceRequest)


def config_rule_id(name: str) -> str:
    """The stable id of a config or code rule: ``alert_`` and 8 hex digits of its name's SHA-256."""
    return "alert_" + hashlib.sha256(name.encode()).hexdigest()[:8]


class AlertService:
    """Holds the rules, their state and silences, evaluates them and dispatches notifications.

    ``rules`` come from config or code and are restored on every start; rules created through the API
    and all silences are kept in ``repository`` (default: in memory only). A rule without a delivery
    uses ``default_delivery``; one without a cooldown uses ``default_cooldown_s``. ``external_url`` is
    this server's base URL, linked from Alertmanager (``<external_url>/alerts``). ``clock`` returns
    epoch ms and is injectable for tests, as are ``sinks`` (a delivery config → sender) and ``stream``
    (where stdout delivery writes).

    With a ``ledger`` (distributed mode) rule states, firing counts and delivery stats are shared:
    an evaluating process reads them before each round and writes them back with compare-and-set, so a
    second evaluator never announces an episode twice; other processes call :meth:`refresh` to show them.
    """

    def __init__(
        self,
        reader: MetricReader,
        *,
        rules: Iterable[AlertRule] = (),
        repository: RuleRepository | None = None,
        default_delivery: Delivery | None = None,
        default_cooldown_s: float = DEFAULT_COOLDOWN_S,
        external_url: str = "http://localhost:9090",
        retry: RetryPolicy | None = None,
        clock: Callable[[], int] = now_ms,
        sinks: Callable[[Delivery], Sink] | None = None,
        stream: TextIO | None = None,
        max_pending: int = 10_000,
        ledger: AlertLedger | None = None,
    ) -> None:
        self._reader = reader
        self._ledger = ledger
        self._repository: RuleRepository = repository or MemoryRuleRepository()
        self._default_delivery: Delivery = default_delivery or StdoutDelivery()
        self._default_cooldown_s = default_cooldown_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        for rule in rules:
            if rule.name in self._entries:
                raise ValueError(f"alert rule {rule.name!r} is defined twice in config")
            self._entries[rule.name] = _Entry(config_rule_id(rule.name), rule, "config")
        self._config_entries = dict(self._entries)
        self._revision = 0
        self._states: dict[str, RuleState] = {}
        self._revisions: dict[str, int] = {}
        self._shared_deliveries: Mapping[str, DeliveryStats] = {}
        self._silences: dict[str, int] = {}
        self._firings: collections.Counter[tuple[str, str]] = collections.Counter()
        self._factory = SinkFactory(generator_url=external_url.rstrip("/") + "/alerts", stream=stream)
        self._dispatcher = Dispatcher(sinks or self._factory, retry=retry, clock=clock, max_pending=max_pending)
        self._lock = asyncio.Lock()
        self._loaded = False
        #: Wall time of the last evaluation round in seconds (None before the first).
        self.last_round_s: float | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load API rules and silences from the repository (once; later calls do nothing)."""
        async with self._lock:
            await self._load()

    async def _load(self, *, again: bool = False) -> None:
        """Load API rules and silences once; ``again`` reloads a shared repository (others change it)."""
        if self._loaded and not (again and getattr(self._repository, "shared", False)):
            return
        snapshot = await self._repository.load()
        entries = dict(self._config_entries)
        for stored in snapshot.rules:
            name = stored.rule.name
            if name in entries:
                if not self._loaded:
                    logger.warning("API alert rule %r is shadowed by the config rule of that name; ignoring it", name)
                continue
            entries[name] = _Entry(stored.rule_id, stored.rule, "api", stored.created_ms)
        now = self._clock()
        self._entries = entries
        self._revision = snapshot.revision
        self._silences = {n: t for n, t in snapshot.silences.items() if n in entries and t > now}
        self._loaded = True

    @property
    def rule_count(self) -> int:
        """How many rules there are (config, code and API) as of the last load or refresh."""
        return len(self._entries)

    async def refresh(self) -> None:
        """Catch up with what other processes changed: rules and silences of a shared repository, and the
        ledger's states, firing counts and delivery stats. Cheap and a no-op for a single process."""
        async with self._lock:
            await self._load(again=True)
        if self._ledger is not None:
            view = await self._ledger.read()
            self._states = {name: state for name, (_, state) in view.states.items()}
            self._revisions = {name: revision for name, (revision, _) in view.states.items()}
            self._firings = collections.Counter(view.firings)
            self._shared_deliveries = view.deliveries

    async def _change(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``attempt`` (which loads, checks and saves) under the lock, again while a shared repository
        reports that another process saved first."""
        async with self._lock:
            for _ in range(_MAX_CONFLICTS):
                await self._load(again=True)
                try:
                    return await attempt()
                except RepositoryConflict:
                    continue
        raise AlertError(503, "alert rules are being changed by other replicas right now; try again")

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let queued notifications go out (up to ``timeout_s``), then close HTTP sessions."""
        await self._dispatcher.aclose(timeout_s)
        await self._factory.aclose()

    async def run(self, interval_s: float) -> None:
        """Evaluate every ``interval_s`` seconds until cancelled. A failing round is logged, not fatal."""
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            try:
                await self.evaluate_async()
            except Exception:
                logger.exception("alert evaluation round failed")
            deadline += interval_s
            now = loop.time()
            if deadline < now:
                logger.warning(
                    "alert evaluation took %.3fs, longer than the %gs interval", self.last_round_s, interval_s
                )
                deadline = now
            await asyncio.sleep(deadline - now)

    # --- evaluation ----------------------------------------------------------------------------------

    def evaluate(self, now: int | None = None) -> Evaluation:
        """Run one whole round at ``now`` (default: the clock) and queue its notifications. Call from the loop."""
        if self._ledger is not None:
            raise RuntimeError("an AlertService with a ledger evaluates with evaluate_async")
        began = time.perf_counter()
        round_, rules = self._begin(now)
        for rule in rules.values():
            round_.add(rule)
        return self._finish(round_, rules, began)

    async def evaluate_async(self, now: int | None = None, *, slice_s: float = 0.02) -> Evaluation:
        """Like :meth:`evaluate`, but yields to the event loop whenever reads have taken ``slice_s``, so a
        slow reader delays requests by one slice, not a whole round. Rules deleted meanwhile are dropped.

        With a ledger, the round starts from the shared states and delivers only what its writes won."""
        began = time.perf_counter()
        if self._ledger is not None:
            await self.refresh()
        round_, rules = self._begin(now)
        slice_began = began
        for rule in rules.values():
            round_.add(rule)
            if time.perf_counter() - slice_began >= slice_s:
                await asyncio.sleep(0)
                slice_began = time.perf_counter()
        if self._ledger is None:
            return self._finish(round_, rules, began)
        result = round_.result()
        started = {rule.name: rule.level for rule in result.started}
        won = await self._ledger.write(
            [
                StateWrite(name, self._revisions.get(name, 0), state, started.get(name))
                for name, state in result.states.items()
            ]
        )
        lost = len(result.states) - len(won)
        if lost:
            logger.info("alert round: %d rule states were written by another evaluator first; skipped", lost)
        evaluation = self._finish(round_, rules, began, won)
        await self._ledger.publish_deliveries(
            {name: stats for name in rules if (stats := self._dispatcher.stats(name)) != DeliveryStats()}
        )
        return evaluation

    def _begin(self, now: int | None) -> tuple[Round, dict[str, AlertRule]]:
        at = self._clock() if now is None else now
        rules = {name: entry.rule for name, entry in self._entries.items()}
        return Round(self._states, dict(self._silences), self._reader, at, self._default_cooldown_s), rules

    def _finish(
        self, round_: Round, rules: dict[str, AlertRule], began: float, won: set[str] | None = None
    ) -> Evaluation:
        """Keep the round's states and queue its notifications, for rules still defined (and, with a
        ledger, only those whose state write won)."""
        result = round_.result()
        current = {name: entry.rule for name, entry in self._entries.items()}
        alive = {name for name, rule in rules.items() if current.get(name) is rule}
        if won is not None:
            alive &= won
            self._revisions.update({name: self._revisions.get(name, 0) + 1 for name in alive})
        self._states = {name: state for name, state in result.states.items() if name in alive}
        for rule in result.started:
            if rule.name in alive:
                self._firings[(rule.name, rule.level)] += 1
        for note in result.notifications:
            if note.rule.name in alive:
                self._dispatcher.submit(note, note.rule.delivery or self._default_delivery)
        self.last_round_s = time.perf_counter() - began
        return result

    async def drain(self) -> None:
        """Wait until every queued notification was delivered or given up on."""
        await self._dispatcher.drain()

    def firing_counts(self) -> dict[tuple[str, str], int]:
        """``tokentrace_alert_firings_total`` by ``(alert, level)``: times each rule entered firing."""
        return dict(self._firings)

    def delivery_stats(self, name: str) -> DeliveryStats:
        """Delivery counters of one rule."""
        return self._dispatcher.stats(name)

    # --- the HTTP API ----------------------------------------------------------------------------------

    def list_alerts(self) -> list[dict[str, Any]]:
        """``GET /alerts``: ``name``, ``metric``, ``op``, ``threshold``, ``window``, ``firing`` (README, Alerts), then rule_id, level, source, cooldown, min_spans, filter,
        state, delivery type, delivery counters and the last read error."""
        now = self._clock()
        return [self._describe(entry, now) for entry in self._entries.values()]

    def _describe(self, entry: _Entry, now: int) -> dict[str, Any]:
        rule = entry.rule
        state = self._states.get(rule.name) or RuleState()
        until = self._silences.get(rule.name)
        silenced = until is not None and until > now
        stats = self._shared_deliveries.get(rule.name) or self._dispatcher.stats(rule.name)
        delivery = rule.delivery or self._default_delivery
        cooldown_s = rule.cooldown_s(self._default_cooldown_s)
        return {
            "name": rule.name,
            "metric": rule.metric,
            "op": rule.op,
            "threshold": rule.threshold,
            "window": rule.window,
            "last_evaluated": _fmt(state.last_evaluated_ms),
            "last_fired": _fmt(state.last_fired_ms),
            "current_value": state.value,
            "firing": state.status == "firing",
            "silenced": silenced,
            "silenced_until": format_ms(until) if silenced and until is not None else None,
            "rule_id": entry.rule_id,
            "level": rule.level,
            "source": entry.source,
            "cooldown": rule.cooldown if rule.cooldown is not None else duration_text(cooldown_s, "cooldown"),
            "min_spans": rule.min_spans,
            "filter": dict(rule.filter),
            "state": state.status,
            "span_count": state.span_count,
            "delivery": delivery.__struct_config__.tag,
            "delivery_failures": stats.failed,
            "delivery_failed_attempts": stats.failed_attempts,
            "last_delivery_error": stats.last_error,
            "last_error": state.error,
        }

    async def create(self, body: bytes) -> dict[str, str]:
        """``POST /alerts``: ``{"rule_id", "name"}`` (answer 201). 400 invalid field, 409 duplicate name."""
        try:
            rule = decode_rule(body)
        except InvalidRule as exc:
            raise AlertError(400, str(exc)) from None

        async def attempt() -> dict[str, str]:
            if rule.name in self._entries:
                raise AlertError(409, f"an alert named {rule.name!r} already exists")
            ids = {entry.rule_id for entry in self._entries.values()}
            rule_id = _new_rule_id(ids)
            entry = _Entry(rule_id, rule, "api", self._clock())
            await self._save({**self._entries, rule.name: entry}, self._silences)
            self._entries[rule.name] = entry
            return {"rule_id": rule_id, "name": rule.name}

        return await self._change(attempt)

    async def silence(self, name: str, body: bytes) -> dict[str, str]:
        """``POST /alerts/{name}/silence`` with ``{"duration": "2h"}``: ``{"silenced_until": ...}``."""
        try:
            duration_s = seconds(duration_text(_silence_decoder.decode(body).duration, "duration"))
        except msgspec.ValidationError as exc:
            raise AlertError(400, describe_validation_error(exc)) from None
        except msgspec.DecodeError as exc:
            raise AlertError(400, f"malformed JSON: {exc}") from None
        except ValueError as exc:
            raise AlertError(400, str(exc)) from None

        async def attempt() -> dict[str, str]:
            self._require(name)
            until = self._clock() + round(duration_s * 1000)
            silences = {**self._silences, name: until}
            await self._save(self._entries, silences)
            self._silences = silences
            return {"silenced_until": format_ms(until)}

        return await self._change(attempt)

    async def delete(self, name: str) -> None:
        """``DELETE /alerts/{name}`` (answer 204). 404 unknown, 409 for a rule from config or code.

        If the rule's firing was announced and not yet resolved, a resolution is sent so receivers close it.
        """

        async def attempt() -> _Entry:
            entry = self._require(name)
            if entry.source == "config":
                raise AlertError(
                    409,
                    f"alert {name!r} comes from config (tokentrace.yml or code), not the API; "
                    "remove it there and restart",
                )
            entries = {n: e for n, e in self._entries.items() if n != name}
            silences = {n: t for n, t in self._silences.items() if n != name}
            await self._save(entries, silences)
            self._entries, self._silences = entries, silences
            return entry

        entry = await self._change(attempt)
        if self._ledger is not None:
            view = await self._ledger.read()
            shared = view.states.get(name)
            await self._ledger.forget([name])
            self._states.pop(name, None)
            state = shared[1] if shared is not None else None
        else:
            state = self._states.pop(name, None)
        if state is not None and state.announced and state.last_fired_ms is not None:
            cooldown_s = entry.rule.cooldown_s(self._default_cooldown_s)
            now = self._clock()
            closing = Notification(entry.rule, "resolved", state.value, state.last_fired_ms, now, cooldown_s)
            self._dispatcher.submit(closing, entry.rule.delivery or self._default_delivery)

    def _require(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise AlertError(404, f"no alert named {name!r}")
        return entry

    async def _save(self, entries: dict[str, _Entry], silences: dict[str, int]) -> None:
        now = self._clock()
        snapshot = Snapshot(
            rules=[StoredRule(e.rule_id, e.rule, e.created_ms or now) for e in entries.values() if e.source == "api"],
            silences={n: t for n, t in silences.items() if t > now},
            revision=self._revision,
        )
        try:
            await self._repository.save(snapshot)
        except RepositoryConflict:
            raise
        except Exception as exc:
            logger.exception("could not save alert rules")
            raise AlertError(500, f"could not save alert rules: {exc}") from exc


def _fmt(epoch_ms: int | None) -> str | None:
    return None if epoch_ms is None else format_ms(epoch_ms)


def _new_rule_id(taken: set[str]) -> str:
    while True:
        rule_id = "alert_" + secrets.token_hex(4)
        if rule_id not in taken:
            return rule_id
