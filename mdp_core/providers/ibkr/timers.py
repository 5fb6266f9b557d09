"""The IBKR client's timers, on an injectable clock (as the window logic of
``mdp_core.windows`` takes its time from outside): tests drive them with a fake clock, with
no real waiting.

- ``Clock``: a monotonic ``now()`` and an async ``sleep(seconds)`` (``SYSTEM_CLOCK``: the
  event loop's ``time.monotonic`` and ``asyncio.sleep``);
- ``Backoff``: the reconnect delays (exponential, equal jitter) and the wait itself;
- ``within``: run an awaitable for at most some seconds of the clock (the graceful stop);
- ``every``: an endless tick, for the staleness watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mdp_core.retry import RetryPolicy

__all__ = ["SYSTEM_CLOCK", "Backoff", "Clock", "Sleep", "every", "system_sleep", "within"]

Sleep = Callable[[float], Awaitable[None]]


async def system_sleep(seconds: float) -> None:
    """``asyncio.sleep`` (named, so options print and compare sensibly)."""
    await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class Clock:
    """A monotonic time source and a way to wait on it; both must use the same time."""

    now: Callable[[], float] = time.monotonic
    sleep: Sleep = system_sleep


SYSTEM_CLOCK = Clock()


class Backoff:
    """Delays between reconnect attempts: doubling from ``initial`` up to ``maximum`` with
    equal jitter (each delay is uniform in [cap/2, cap]), so there is never a burst of
    instant retries (a restarting gateway refuses connections for a minute or two) and
    clients that lost the same gateway do not come back in lockstep. ``delays`` keeps the
    last 100 delays actually waited."""

    def __init__(self, initial: float, maximum: float, sleep: Sleep, rng: Any = None) -> None:
        self.policy = RetryPolicy(
            initial_backoff=initial, max_backoff=maximum, multiplier=2, jitter="equal", rng=rng
        )
        self._sleep = sleep
        self.delays: deque[float] = deque(maxlen=100)

    def delay(self, attempt: int) -> float:
        """The delay before attempt ``attempt + 1`` (``attempt`` >= 1 failed or lost)."""
        return self.policy.backoff(attempt)

    async def wait(self, delay: float) -> None:
        """Wait ``delay`` seconds on the backoff's sleep (recorded in ``delays``)."""
        self.delays.append(delay)
        await self._sleep(delay)


async def within(clock: Clock, seconds: float, work: Awaitable[Any]) -> bool:
    """Run ``work`` for at most ``seconds`` of ``clock``; True if it finished in time, False
    if it was cancelled at the deadline (its ``finally`` blocks have run by then). An
    exception of ``work`` propagates."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        timer.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def every(clock: Clock, interval: float) -> AsyncIterator[float]:
    """Yield ``clock.now()`` every ``interval`` seconds of ``clock``, forever."""
    while True:
        await clock.sleep(interval)
        yield clock.now()
