"""``Pump``: the gateway's data pump, the one task that streams to every session.

Every ``tick_interval`` real seconds it moves to the current simulated time and has each
session write what became due since the last run (or skip it while data is paused or the
gateway is stalled). ``wait(n)`` lets tests wait for runs instead of sleeping.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Collection

from mdp_core.gateway.session import Session
from mdp_core.gateway.state import GatewayState
from mdp_core.logs import logger

__all__ = ["Pump"]


class Pump:
    """Streams to ``sessions`` (the gateway's live set) every ``tick_interval`` real seconds;
    ``tick_interval`` must be > 0 (``ValueError`` naming it otherwise)."""

    def __init__(
        self, state: GatewayState, sessions: Collection[Session], tick_interval: float
    ) -> None:
        if not tick_interval > 0:
            raise ValueError(f"invalid tick_interval {tick_interval!r}: expected seconds > 0")
        self.state = state
        self.tick_interval = tick_interval
        self.runs = 0
        self._sessions = sessions
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def start(self) -> None:
        """Start pumping (no-op if running)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="gateway-pump")

    async def stop(self) -> None:
        """Stop pumping (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def wait(self, n: int = 1) -> None:
        """Wait until the pump has run ``n`` more times."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self.runs + n, future))
        await future

    async def _loop(self) -> None:
        # Each pump covers at most `span` simulated seconds, so a gateway that cannot keep up
        # lags behind (and says so) instead of doing ever larger pumps.
        clock = self.state.clock
        span = max(5.0, 4 * self.tick_interval * clock.time_compression)
        pumped_until = clock.now()
        warned_at = -math.inf
        while True:
            await asyncio.sleep(self.tick_interval)
            target = clock.now()
            now = min(target, pumped_until + span)
            pumped_until = now
            if target - now > span and time.monotonic() - warned_at > 10:
                warned_at = time.monotonic()
                self.state.count("lagging_pumps")
                logger.warning(
                    f"gateway: cannot keep up; data lags {target - now:.0f} simulated seconds"
                )
            self._run(now)

    def _run(self, now: float) -> None:
        skip = self.state.data_paused or self.state.stalled
        for session in list(self._sessions):
            try:
                session.pump(now, skip)
            except Exception:
                logger.exception(f"gateway: streaming to {session} failed; closing it")
                session.abort()
        self.runs += 1
        waiting = []
        for target, future in self._waiters:
            if target <= self.runs:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._waiters = waiting
