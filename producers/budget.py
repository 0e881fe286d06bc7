"""A hard spending limit for a workflow, safe under threads and asyncio.

Reserve-then-settle: reserve an estimate *before* a model call (``BudgetExceeded`` if spent + reserved +
estimate would pass the limit), then settle the reservation with the call's actual cost. Reservations are
checked and taken under one lock, so concurrent reservations can never together pass the limit. Amounts
are kept as integer picodollars, so sums never drift.

    budget = Budget(0.50)
    with budget.reserve(0.02) as r:   # raises BudgetExceeded before the call is made
        resp = call_model(...)
        r.settle(cost_of(resp))       # the true cost; un-settled reservations settle at the estimate
"""

from __future__ import annotations

import logging
import math
import threading
from types import TracebackType
from typing import Self

__all__ = ["Budget", "BudgetExceeded", "Reservation"]

log = logging.getLogger(__name__)

_UNITS_PER_USD = 10**12


def _to_units(usd: float, field: str) -> int:
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not (usd >= 0 and math.isfinite(usd)):
        raise ValueError(f"{field} must be a finite number of USD >= 0, got {usd!r}")
    return round(usd * _UNITS_PER_USD)


def _to_usd(units: int) -> float:
    return units / _UNITS_PER_USD


class BudgetExceeded(Exception):
    """A call would take the budget past its limit; raised before the call is reserved or recorded."""

    def __init__(
        self, name: str, limit_usd: float, spent_usd: float, reserved_usd: float, requested_usd: float
    ) -> None:
        self.name = name
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.reserved_usd = reserved_usd
        self.requested_usd = requested_usd
        label = f"budget {name!r}" if name else "budget"
        left = max(0.0, limit_usd - spent_usd - reserved_usd)
        super().__init__(
            f"{label} of ${limit_usd:.6g} exceeded: ${spent_usd:.6g} spent + ${reserved_usd:.6g} reserved, "
            f"this call needs ${requested_usd:.6g} (${left:.6g} left)"
        )


class Budget:
    """A spending limit in USD for one workflow or trace (share one object to cap several traces)."""

    def __init__(self, limit_usd: float, *, name: str = "") -> None:
        self.name = name
        self._limit = _to_units(limit_usd, "limit_usd")
        self._spent = 0
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def limit_usd(self) -> float:
        return _to_usd(self._limit)

    @property
    def spent_usd(self) -> float:
        """Settled and charged costs."""
        return _to_usd(self._spent)

    @property
    def reserved_usd(self) -> float:
        """Estimates of calls in flight."""
        return _to_usd(self._reserved)

    @property
    def remaining_usd(self) -> float:
        """What new reservations may still take (never negative)."""
        with self._lock:
            return _to_usd(max(0, self._limit - self._spent - self._reserved))

    @property
    def exhausted(self) -> bool:
        """True once settled costs reach the limit."""
        return self._spent >= self._limit

    def reserve(self, estimate_usd: float) -> Reservation:
        """Set ``estimate_usd`` aside for a call about to be made, or raise ``BudgetExceeded``."""
        units = _to_units(estimate_usd, "estimate_usd")
        self._take(units, reserve=True)
        return Reservation(self, units)

    def charge(self, cost_usd: float) -> None:
        """Record a cost at once (reserve + settle), or raise ``BudgetExceeded`` and record nothing."""
        self._take(_to_units(cost_usd, "cost_usd"), reserve=False)

    def would_exceed(self, cost_usd: float) -> bool:
        """Whether reserving ``cost_usd`` now would fail."""
        units = _to_units(cost_usd, "cost_usd")
        with self._lock:
            return self._spent + self._reserved + units > self._limit

    def _take(self, units: int, *, reserve: bool) -> None:
        with self._lock:
            if self._spent + self._reserved + units > self._limit:
                spent, reserved = self._spent, self._reserved
            elif reserve:
                self._reserved += units
                return
            else:
                self._spent += units
                return
        raise BudgetExceeded(self.name, self.limit_usd, _to_usd(spent), _to_usd(reserved), _to_usd(units))

    def _settle(self, reservation: Reservation, actual: int | None) -> bool:
        """Settle (``actual`` units) or release (``None``) a reservation once; False if already done."""
        with self._lock:
            if reservation._done:
                return False
            reservation._done = True
            self._reserved -= reservation._units
            if actual is None:
                return True
            self._spent += actual
            over = self._spent > self._limit
        if over:
            log.warning(
                "budget %r: a call cost more than its reservation; spent $%.6g of $%.6g",
                self.name,
                self.spent_usd,
                self.limit_usd,
            )
        return True

    def __repr__(self) -> str:
        return (
            f"Budget(name={self.name!r}, limit_usd={self.limit_usd}, spent_usd={self.spent_usd}, "
            f"reserved_usd={self.reserved_usd})"
        )


class Reservation:
    """Money set aside for one call. Settle it with the actual cost, or release it if the call never ran.

    As a (sync or async) context manager: an exception releases it, a normal exit without ``settle``
    settles it at the estimate.
    """

    __slots__ = ("_budget", "_done", "_units")

    def __init__(self, budget: Budget, units: int) -> None:
        self._budget = budget
        self._units = units
        self._done = False

    @property
    def amount_usd(self) -> float:
        return _to_usd(self._units)

    @property
    def done(self) -> bool:
        """Settled or released."""
        return self._done

    def settle(self, actual_usd: float | None = None) -> None:
        """Turn the reservation into spending of ``actual_usd`` (the estimate when ``None``).

        The actual cost is recorded even when it exceeds the estimate: the money is already spent; later
        reservations then fail. Settling twice is an error.
        """
        actual = self._units if actual_usd is None else _to_units(actual_usd, "actual_usd")
        if not self._budget._settle(self, actual):
            raise RuntimeError("reservation already settled or released")

    def release(self) -> None:
        """Give the reserved amount back (the call was not made). Does nothing once settled or released."""
        self._budget._settle(self, None)

    def _exit(self, exc: BaseException | None) -> None:
        if self._done:
            return
        if exc is None:
            self.settle()
        else:
            self.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)
