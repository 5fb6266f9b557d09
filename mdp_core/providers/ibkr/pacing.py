"""IB's pacing rules for historical data, for both sides: the gateway that enforces them and the
client that follows them.

IB answers error 162 ("Historical data request pacing violation") to a historical-data
request that would make

- more than 60 requests within any 10 minutes,
- two identical requests within 15 seconds, or
- six or more requests for the same contract, exchange and tick type within 2 seconds.

``PacingRules`` holds those numbers (``scaled(f)`` multiplies the three windows, so tests and
benchmarks can run IB's rules faster); ``PacingLedger`` says whether a request breaks a rule
now and from when it would not; ``HistoryPacer`` makes a client wait for that moment.

Time is any monotonic clock in seconds (injectable). The pacer stamps each request with the
time its answer arrived, not when it was sent: the server saw the request no later than
that, so spacing the stamps by a window spaces the server's view by at least as much, even
when it answers a burst of requests slowly.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, replace

__all__ = ["HistoryPacer", "PacingLedger", "PacingRules", "Ticket", "earliest_schedule"]


@dataclass(frozen=True, slots=True)
class PacingRules:
    """IB's historical-data pacing rules (the defaults are IB's)."""

    max_requests: int = 60
    window: float = 600.0
    identical_window: float = 15.0
    same_contract_max: int = 5  # six or more within the window is a violation
    same_contract_window: float = 2.0

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.same_contract_max < 1:
            raise ValueError(
                f"pacing limits {self.max_requests}, {self.same_contract_max}: expected >= 1"
            )
        for name in ("window", "identical_window", "same_contract_window"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"pacing {name} {value!r}: expected seconds >= 0")

    def scaled(self, factor: float) -> PacingRules:
        """The same rules with every window multiplied by ``factor`` (> 0)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"pacing scale {factor!r}: expected a number > 0")
        return replace(
            self,
            window=self.window * factor,
            identical_window=self.identical_window * factor,
            same_contract_window=self.same_contract_window * factor,
        )

    @property
    def longest(self) -> float:
        return max(self.window, self.identical_window, self.same_contract_window)


@dataclass(eq=False, slots=True)
class Ticket:
    """One request in a ledger; ``stamp`` is ``math.inf`` while it is in flight."""

    contract: Hashable
    request: Hashable
    stamp: float = math.inf


class PacingLedger:
    """The requests of the last windows and the rules they must keep."""

    def __init__(self, rules: PacingRules | None = None) -> None:
        self.rules = rules or PacingRules()
        self._tickets: list[Ticket] = []

    def __len__(self) -> int:
        return len(self._tickets)

    def add(self, contract: Hashable, request: Hashable, stamp: float = math.inf) -> Ticket:
        """Count a request (``stamp``: when it counts from; ``inf`` until ``ticket.stamp`` is
        set)."""
        ticket = Ticket(contract, request, stamp)
        self._tickets.append(ticket)
        return ticket

    def prune(self, now: float) -> None:
        """Forget requests no rule can count any more."""
        horizon = now - self.rules.longest
        self._tickets = [t for t in self._tickets if t.stamp > horizon]

    def violation(self, now: float, contract: Hashable, request: Hashable) -> str | None:
        """Which rule a request at ``now`` would break (None: none)."""
        r, tickets = self.rules, self._tickets
        if sum(1 for t in tickets if t.stamp > now - r.window) >= r.max_requests:
            return f"more than {r.max_requests} requests within {r.window:g} seconds"
        if any(t.request == request and t.stamp > now - r.identical_window for t in tickets):
            return f"an identical request within {r.identical_window:g} seconds"
        window = now - r.same_contract_window
        if sum(1 for t in tickets if t.contract == contract and t.stamp > window) >= (
            r.same_contract_max
        ):
            return (
                f"{r.same_contract_max + 1} or more requests for the same contract within "
                f"{r.same_contract_window:g} seconds"
            )
        return None

    def earliest(self, contract: Hashable, request: Hashable) -> float:
        """The earliest time at which a request breaks no rule (``inf``: not before a request
        in flight is answered)."""
        r = self.rules
        stamps = [t.stamp for t in self._tickets]
        at = -math.inf
        if len(stamps) >= r.max_requests:
            at = heapq.nlargest(r.max_requests, stamps)[-1] + r.window
        same = [t.stamp for t in self._tickets if t.contract == contract]
        if len(same) >= r.same_contract_max:
            at = max(at, heapq.nlargest(r.same_contract_max, same)[-1] + r.same_contract_window)
        identical = [t.stamp for t in self._tickets if t.request == request]
        if identical:
            at = max(at, max(identical) + r.identical_window)
        return at


def earliest_schedule(
    rules: PacingRules, requests: Sequence[tuple[Hashable, Hashable]]
) -> list[float]:
    """The earliest send times (seconds from 0) of ``(contract, request)`` keys sent in this
    order under ``rules``, if every answer came at once: the lower bound on the time the
    pacing rules allow for a request plan (its last entry)."""
    ledger = PacingLedger(rules)
    times: list[float] = []
    now = 0.0
    for contract, request in requests:
        ledger.prune(now)
        now = max(now, ledger.earliest(contract, request))
        ledger.add(contract, request, now)
        times.append(now)
    return times


class HistoryPacer:
    """Makes historical requests wait until IB's pacing rules allow them.

    ``async with pacer.slot(contract, request):`` waits for the moment the request breaks no
    rule, counts it, and on leaving stamps it with the time (the answer arrived). Waiters go
    first come, first served. ``hold_off(seconds)`` (after an unexpected pacing violation)
    keeps every request back for that long. ``clock`` and ``sleep`` may be virtual.
    """

    def __init__(
        self,
        rules: PacingRules | None = None,
        *,
        margin: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not margin >= 0:
            raise ValueError(f"pacing margin {margin!r}: expected seconds >= 0")
        self.ledger = PacingLedger(rules)
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._turn = asyncio.Lock()
        self._answered = asyncio.Event()
        self._not_before = -math.inf
        self.waited = 0.0  # seconds spent waiting, in total

    @property
    def rules(self) -> PacingRules:
        return self.ledger.rules

    def delay(self, contract: Hashable, request: Hashable) -> float:
        """Seconds from now until a request may go (``inf``: until one in flight is answered)."""
        now = self._clock()
        self.ledger.prune(now)
        at = max(self.ledger.earliest(contract, request), self._not_before)
        return max(0.0, at + self.margin - now) if at > -math.inf else 0.0

    async def acquire(self, contract: Hashable, request: Hashable) -> Ticket:
        """Wait until the request may go, then count it (in flight) and return its ticket."""
        async with self._turn:
            while (wait := self.delay(contract, request)) > 0:
                started = self._clock()
                if math.isinf(wait):
                    self._answered.clear()
                    await self._answered.wait()
                else:
                    await self._sleep(wait)
                self.waited += self._clock() - started
            return self.ledger.add(contract, request)

    def release(self, ticket: Ticket) -> None:
        """The request was answered (or failed): it counts from now."""
        ticket.stamp = self._clock()
        self._answered.set()

    def hold_off(self, seconds: float) -> None:
        """No request before ``seconds`` from now (e.g. after an unexpected violation)."""
        self._not_before = max(self._not_before, self._clock() + seconds)

    def slot(self, contract: Hashable, request: Hashable) -> _Slot:
        """``async with pacer.slot(contract, request):`` around one request."""
        return _Slot(self, contract, request)


class _Slot:
    def __init__(self, pacer: HistoryPacer, contract: Hashable, request: Hashable) -> None:
        self._pacer, self._contract, self._request = pacer, contract, request
        self._ticket: Ticket | None = None

    async def __aenter__(self) -> Ticket:
        self._ticket = await self._pacer.acquire(self._contract, self._request)
        return self._ticket

    async def __aexit__(self, *exc: object) -> None:
        if self._ticket is not None:
            self._pacer.release(self._ticket)
