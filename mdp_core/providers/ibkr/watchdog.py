"""Staleness watchdog: notices symbols that went silent while their market is open.

IB does not close the socket when its link to the data farms drops (error 1100): data just
stops. The watchdog measures, per symbol, how long it has been silent *while the market is
open* (an overnight gap is not silence) and reports:

- ``stale`` after ``stale_after`` seconds (the source logs a warning and counts it);
- ``resubscribe`` after ``resubscribe_after`` seconds (the source re-requests the data),
  again every ``resubscribe_after`` seconds while it stays silent.

"Open" comes from ``market_open(utc_now)``: by default the regular session of an
``exchange_calendars`` calendar (``XNYS``); inject any function (tests use ``lambda t: True``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mdp_core.calendars import MarketOpen, market_hours

__all__ = ["MarketOpen", "StalenessWatchdog", "WatchdogVerdict", "load_market_hours"]


async def load_market_hours(calendar: str) -> MarketOpen:
    """``market_open(t)`` for the regular sessions of ``calendar`` (e.g. ``"XNYS"``), built
    in a thread (building a calendar takes about half a second); see
    ``mdp_core.calendars.market_hours``. Raises ``ValueError`` for an unknown calendar."""
    return await asyncio.to_thread(market_hours, calendar)


@dataclass(frozen=True, slots=True)
class WatchdogVerdict:
    """What one check found: symbols that just became stale, that recovered, and that
    should be resubscribed now."""

    newly_stale: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    resubscribe: list[str] = field(default_factory=list)


class StalenessWatchdog:
    """Per-symbol silence during market hours (see the module docstring).

    ``check(last_update, now)`` takes each symbol's last update time and the current time,
    both on the same monotonic clock. ``rearm(symbols, now)`` restarts their silence count
    (after a (re)subscription). Not thread-safe; call from the event loop.
    """

    def __init__(
        self,
        stale_after: float,
        resubscribe_after: float,
        market_open: MarketOpen,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not stale_after > 0:
            raise ValueError(f"stale_after {stale_after!r}: expected seconds > 0")
        if not resubscribe_after >= stale_after:
            raise ValueError(
                f"resubscribe_after {resubscribe_after!r}: expected seconds >= stale_after "
                f"({stale_after})"
            )
        self.stale_after = stale_after
        self.resubscribe_after = resubscribe_after
        self.market_open = market_open
        self.wall_clock = wall_clock
        self.stale: set[str] = set()
        self.stale_events = 0
        self._since: dict[str, float] = {}
        self._stale_at: dict[str, float] = {}
        self._resubscribed: dict[str, float] = {}
        self._was_open = False

    def rearm(self, symbols: Iterable[str], now: float) -> None:
        """Count silence of ``symbols`` from ``now`` at the earliest (after a (re)connect)."""
        for symbol in symbols:
            self._since[symbol] = now

    def check(self, last_update: Mapping[str, float], now: float) -> WatchdogVerdict:
        """Update the stale set; return what changed and what to resubscribe."""
        verdict = WatchdogVerdict()
        if not self.market_open(self.wall_clock()):
            if self._was_open:
                verdict.recovered.extend(sorted(self.stale))
                self.stale.clear()
            self._was_open = False
            return verdict
        if not self._was_open:  # silence counts from the opening, not from last night
            self._was_open = True
            self.rearm(last_update, now)
        since, stale_at, resubscribed = self._since, self._stale_at, self._resubscribed
        for symbol, updated in last_update.items():
            quiet_from = max(updated, since.get(symbol, updated))
            if symbol in self.stale:
                if updated > stale_at[symbol]:
                    self.stale.discard(symbol)
                    verdict.recovered.append(symbol)
                    continue
            elif now - quiet_from >= self.stale_after:
                self.stale.add(symbol)
                stale_at[symbol] = now
                self.stale_events += 1
                verdict.newly_stale.append(symbol)
            else:
                continue
            last_try = max(quiet_from, resubscribed.get(symbol, quiet_from))
            if now - last_try >= self.resubscribe_after:
                resubscribed[symbol] = now  # the next attempt after another resubscribe_after
                verdict.resubscribe.append(symbol)
        return verdict
