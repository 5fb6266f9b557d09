"""The IBKR client's timers driven by a fake clock: no real waiting, exact times."""

from __future__ import annotations

import asyncio
import random

from mdp_core.providers.ibkr.client import IBClient
from mdp_core.providers.ibkr.options import IBKROptions
from mdp_core.providers.ibkr.timers import Backoff, Clock, within
from mdp_core.providers.ibkr.watchdog import StalenessWatchdog
from mdp_core.retry import RetryPolicy
from mdp_core.settings import IBKRSettings


class FakeClock:
    """Time moves only when someone sleeps on it; ``reached(t)`` fires once it is >= t."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, asyncio.Event]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        for at, event in self._waiters:
            if self.t >= at:
                event.set()
        await asyncio.sleep(0)  # let others run, as a real sleep would

    def reached(self, at: float) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.append((at, event))
        return event

    def clock(self) -> Clock:
        return Clock(now=self.now, sleep=self.sleep)


async def test_backoff_waits_the_policy_delays_on_its_clock() -> None:
    fake = FakeClock()
    backoff = Backoff(0.5, 4.0, fake.sleep, random.Random(3))
    async with asyncio.timeout(5):
        for attempt in range(1, 7):
            await backoff.wait(backoff.delay(attempt))
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, multiplier=2, jitter="equal",
                         rng=random.Random(3))  # fmt: skip
    expected = [policy.backoff(n) for n in range(1, 7)]
    assert fake.sleeps == expected == list(backoff.delays)
    assert fake.t == sum(expected)
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(cap / 2 <= d <= cap for d, cap in zip(expected, caps, strict=True))


async def test_graceful_stop_deadline_is_on_the_clock() -> None:
    fake = FakeClock()
    cleaned = asyncio.Event()

    async def never_ends() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    async def ends() -> str:
        return "done"

    async with asyncio.timeout(5):
        assert await within(fake.clock(), 2.0, never_ends()) is False
        assert cleaned.is_set() and fake.t == 2.0
        assert await within(fake.clock(), 2.0, ends()) is True


async def test_staleness_watch_warns_then_resubscribes_on_the_clock() -> None:
    fake = FakeClock()
    options = IBKROptions(clock=fake.clock(), stale_after=1.0, resubscribe_after=2.0,
                          market_open=lambda now: True)  # fmt: skip
    client = IBClient(["AAPL", "MSFT"], "quotes", None, IBKRSettings(), options)
    st = client.st
    st.state = "streaming"
    st.watchdog = StalenessWatchdog(1.0, 2.0, lambda now: True)
    st.watchdog.rearm(st.symbols, fake.now())
    for state in st.by_symbol.values():
        state.subscription = object()  # subscribed, and silent from t=0 on
    async with asyncio.timeout(5):
        watching = asyncio.create_task(client.supervisor.watch())
        await fake.reached(0.75).wait()
        assert client.stale_symbols() == [] and client.supervisor.pending == {}
        st.by_symbol["MSFT"].updated = fake.now()  # MSFT speaks at 0.75
        await fake.reached(2.5).wait()  # the check at 2.25 is done
        watching.cancel()
    assert set(fake.sleeps) == {0.25}  # a quarter of stale_after between checks
    assert client.stale_symbols() == ["AAPL", "MSFT"]
    stale = [issue for issue in st.errors if "stale" in issue.message]
    assert [issue.symbols for issue in stale] == [("AAPL",), ("MSFT",)]
    # Silence counts from the first check (0.25, the market "opening"): at 2.25 AAPL was
    # silent for resubscribe_after (2 s), MSFT (heard at 0.75) only for 1.5 s.
    assert client.supervisor.pending == {"AAPL": "stale"}
