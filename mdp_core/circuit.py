"""A circuit breaker (closed -> open -> half-open) shared by a coordinator's workers.

Closed: writes go through. After ``failure_threshold`` consecutive transient failures it
opens: nobody calls the database. Once ``reset_timeout`` has passed, the next caller becomes
the single probe (half-open); its success closes the circuit, its failure reopens it.
Callers waiting on an open circuit give up at their ``deadline`` (the coordinator then
spools their batch), so an open circuit never holds data forever.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from mdp_core.logs import logger

__all__ = ["CircuitBreaker", "CircuitState"]

CircuitState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """See the module docstring. ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 0.5,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold {failure_threshold!r}: expected an int >= 1")
        if not reset_timeout > 0:
            raise ValueError(f"reset_timeout {reset_timeout!r}: expected seconds > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self.state: CircuitState = "closed"
        self.failures = 0  # consecutive transient failures
        self.opened_at: float | None = None  # last time it (re)opened
        self.outage_since: float | None = None  # first opening since it was last closed
        self.times_opened = 0
        self.last_error: BaseException | None = None
        self._changed = asyncio.Event()

    # -- outcomes -----------------------------------------------------------------------

    def record_success(self) -> None:
        """The database answered (a commit, or an error that is not about infrastructure)."""
        self.failures = 0
        if self.state != "closed":
            logger.info("circuit {} closed: the database answers again", self.name or "")
            self.state = "closed"
            self.opened_at = self.outage_since = None
            self._notify()

    def record_failure(self, exc: BaseException) -> None:
        """A transient (infrastructure) failure."""
        self.failures += 1
        self.last_error = exc
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.failure_threshold
        ):
            now = self._clock()
            if self.state == "closed":
                self.outage_since = now
                self.times_opened += 1
                logger.warning(
                    "circuit {} opened after {} consecutive failures: {}",
                    self.name or "",
                    self.failures,
                    type(exc).__name__,
                )
            self.state = "open"
            self.opened_at = now
            self._notify()

    def release_probe(self) -> None:
        """The probe ended without an outcome (cancelled): let another caller probe."""
        if self.state == "half_open":
            self.state = "open"
            self._notify()

    # -- waiting ------------------------------------------------------------------------

    async def acquire(self, deadline: float | None = None) -> bool:
        """Wait until the caller may call the database; ``True`` = go ahead (closed, or
        the caller is the half-open probe and must report its outcome), ``False`` =
        ``deadline`` (on this breaker's clock) passed while the circuit stayed open."""
        while self.state != "closed":
            now = self._clock()
            if self.state == "open":
                assert self.opened_at is not None
                probe_at = self.opened_at + self.reset_timeout
                if now >= probe_at:
                    self.state = "half_open"
                    return True
            else:
                probe_at = math.inf  # half-open: wait for the probe's outcome
            if deadline is not None and now >= deadline:
                return False
            wake_at = min(probe_at, math.inf if deadline is None else deadline)
            await self._wait_change(None if wake_at == math.inf else wake_at - now)
        return True

    async def _wait_change(self, timeout: float | None) -> None:
        changed = asyncio.ensure_future(self._changed.wait())
        waiters: set[asyncio.Future[Any]] = {changed}
        if timeout is not None:
            waiters.add(asyncio.ensure_future(self._sleep(timeout)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waiters:
                fut.cancel()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
