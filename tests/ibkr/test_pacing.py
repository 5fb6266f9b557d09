"""The historical-data pacer on virtual time: it keeps IB's three rules as the server sees
them, even when the server answers slowly, and wastes no time doing so."""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Hashable

import pytest

from mdp_core.providers.ibkr.pacing import (
    HistoryPacer,
    PacingLedger,
    PacingRules,
    earliest_schedule,
)

IB = PacingRules()


class VirtualTime:
    """A clock and a sleep that advances it: tasks wake in time order, instantly."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._n = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), self._n, future))
        await future

    async def run(self, main: asyncio.Task[object]) -> None:
        """Advance time whenever every task is asleep, until ``main`` is done."""
        while not main.done():
            for _ in range(50):  # let every runnable task run
                await asyncio.sleep(0)
            if self._sleepers and not main.done():
                at, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, at)
                future.set_result(None)


def _violations(rules: PacingRules, seen: list[tuple[float, Hashable, Hashable]]) -> list[str]:
    """Replay requests as a server saw them (time order) against the rules."""
    ledger = PacingLedger(rules)
    out = []
    for at, contract, request in sorted(seen, key=lambda s: s[0]):
        rule = ledger.violation(at, contract, request)
        if rule is not None:
            out.append(f"{at}: {rule}")
        ledger.add(contract, request, at)
    return out


async def _serve(
    pacer: HistoryPacer,
    vt: VirtualTime,
    plan: list[tuple[Hashable, Hashable]],
    service: list[float],
    concurrency: int,
) -> list[tuple[float, Hashable, Hashable]]:
    """Send ``plan`` through ``pacer`` from ``concurrency`` workers to a one-at-a-time server
    taking ``service[k]`` seconds for request k; what the server saw, with its times."""
    seen: list[tuple[float, Hashable, Hashable]] = []
    server_free = 0.0
    queue = list(enumerate(plan))

    async def worker() -> None:
        nonlocal server_free
        while queue:
            k, (contract, request) = queue.pop(0)
            async with pacer.slot(contract, request):
                handled = max(vt.now, server_free)  # the server handles requests in turn
                server_free = handled + service[k]
                seen.append((handled, contract, request))
                await vt.sleep(server_free - vt.now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


def _plan(symbols: int, per_symbol: int) -> list[tuple[Hashable, Hashable]]:
    return [
        (f"S{s}", ("S", s, k)) for k in range(per_symbol) for s in range(symbols)
    ]  # round-robin over symbols


Seen = list[tuple[float, Hashable, Hashable]]


async def _run(
    rules: PacingRules,
    plan: list[tuple[Hashable, Hashable]],
    service: list[float],
    concurrency: int,
) -> tuple[Seen, float]:
    vt = VirtualTime()
    pacer = HistoryPacer(rules, clock=vt.clock, sleep=vt.sleep)
    task = asyncio.ensure_future(_serve(pacer, vt, plan, service, concurrency))
    await vt.run(task)  # type: ignore[arg-type]
    return task.result(), vt.now


async def test_instant_answers_follow_the_earliest_schedule_exactly() -> None:
    plan = _plan(symbols=10, per_symbol=22)  # a month of RTH minutes for 10 symbols
    seen, took = await _run(IB, plan, [0.0] * len(plan), concurrency=8)
    assert _violations(IB, seen) == []
    bound = earliest_schedule(IB, plan)
    assert took == bound[-1] == 3 * 600.0  # 220 requests: 4 windows of at most 60
    assert sorted(at for at, _, _ in seen) == bound


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_slow_server_never_sees_a_violation(seed: int) -> None:
    rng = random.Random(seed)
    rules = IB.scaled(0.01)
    plan = _plan(symbols=3, per_symbol=40) + [("S0", ("S", 0, 0))] * 3  # with repeats
    service = [rng.expovariate(1 / 0.05) for _ in plan]  # answers take ~50 ms, some far more
    seen, took = await _run(rules, plan, service, concurrency=6)
    assert len(seen) == len(plan)
    assert _violations(rules, seen) == []
    assert took >= earliest_schedule(rules, plan)[-1]


async def test_identical_and_same_contract_rules() -> None:
    vt = VirtualTime()
    pacer = HistoryPacer(IB, clock=vt.clock, sleep=vt.sleep)

    async def go() -> list[float]:
        times = []
        for contract, request in [
            ("A", 1),
            ("A", 1),
            ("A", 2),
            ("A", 3),
            ("A", 4),
            ("A", 5),
            ("A", 6),
        ]:
            async with pacer.slot(contract, request):
                times.append(vt.now)
        return times

    task = asyncio.ensure_future(go())
    await vt.run(task)  # type: ignore[arg-type]
    # the repeat waits 15 s; then 2..6 are four more requests for A within 2 s of 15 s: the
    # fifth request for A in the window is allowed, the sixth waits for the window to pass
    assert task.result() == [0.0, 15.0, 15.0, 15.0, 15.0, 15.0, 17.0]


async def test_hold_off_delays_everything_and_delay_reports_it() -> None:
    vt = VirtualTime()
    pacer = HistoryPacer(IB, clock=vt.clock, sleep=vt.sleep, margin=0.5)
    assert pacer.delay("A", 1) == 0.0
    pacer.hold_off(30.0)
    assert pacer.delay("A", 1) == 30.5

    async def go() -> float:
        async with pacer.slot("A", 1):
            return vt.now

    task = asyncio.ensure_future(go())
    await vt.run(task)  # type: ignore[arg-type]
    assert task.result() == 30.5 and pacer.waited == 30.5


def test_rules_validate_and_scale() -> None:
    assert IB.scaled(0.01) == PacingRules(60, 6.0, 0.15, 5, 0.02)
    with pytest.raises(ValueError, match="pacing scale 0"):
        IB.scaled(0)
    with pytest.raises(ValueError, match="pacing window -1"):
        PacingRules(window=-1)
