"""Market sessions, from ``exchange_calendars`` (``XNYS`` by default; ``24/7`` = always open).

Used by the IBKR staleness watchdog (is the market open now?), by Dagster's freshness
and gap checks (which parts of a period was it open?) and by session bars (``Sessions``:
which exchange day holds a time?).
"""

from __future__ import annotations

import bisect
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from mdp_core.logs import logger

if TYPE_CHECKING:
    import exchange_calendars as xcals

__all__ = [
    "MarketOpen",
    "Sessions",
    "get_calendar",
    "market_hours",
    "open_intervals",
    "sessions_of",
]

MarketOpen = Callable[[datetime], bool]


@contextmanager
def _quiet() -> Iterator[None]:
    # exchange_calendars 4.13 uses pandas APIs that pandas 3.1 deprecates: not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# Calendars are built in threads (IBKR sources use asyncio.to_thread), and catch_warnings
# swaps the process-wide filters: one builder at a time.
_building = threading.Lock()


def get_calendar(name: str) -> xcals.ExchangeCalendar:
    """The calendar called ``name`` (built once per process: about half a second).

    Raises ``ValueError`` naming the calendar and examples of valid names."""
    with _building:
        return _build(name)


@lru_cache(maxsize=16)
def _build(name: str) -> xcals.ExchangeCalendar:
    import exchange_calendars as xcals

    try:
        with _quiet():
            return xcals.get_calendar(name)
    except xcals.errors.InvalidCalendarName:
        raise ValueError(
            f"unknown market calendar {name!r}: expected an exchange_calendars name such as "
            "'XNYS' (NYSE), 'XNAS', 'XLON', or '24/7' for a market that never closes "
            "(all names: python -c 'import exchange_calendars; "
            "print(exchange_calendars.get_calendar_names())')"
        ) from None


def open_intervals(
    calendar: str, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` (UTC) during which ``calendar``'s market is open."""
    import pandas as pd

    cal = get_calendar(calendar)
    first = pd.Timestamp((start - timedelta(days=2)).date())
    last = pd.Timestamp((end + timedelta(days=1)).date())
    with _quiet():
        sessions = cal.schedule.loc[max(first, cal.first_session) : min(last, cal.last_session)]
    out: list[tuple[datetime, datetime]] = []
    for row in sessions.itertuples():
        pieces = [(row.open, row.close)]
        if not pd.isna(row.break_start) and not pd.isna(row.break_end):
            pieces = [(row.open, row.break_start), (row.break_end, row.close)]
        for opens, closes in pieces:
            lo, hi = max(opens.to_pydatetime(), start), min(closes.to_pydatetime(), end)
            if lo < hi:
                out.append((lo, hi))
    return out


def market_hours(calendar: str) -> MarketOpen:
    """``market_open(t)``: whether ``calendar``'s market is open at ``t`` (UTC).

    Outside the calendar's date range the market counts as open (with one warning), so a
    watchdog relying on it stays on rather than silently off."""
    import pandas as pd

    cal = get_calendar(calendar)
    warned = False

    def market_open(now: datetime) -> bool:
        nonlocal warned
        try:
            with _quiet():
                return bool(cal.is_open_on_minute(pd.Timestamp(now).floor("min")))
        except ValueError as exc:  # outside the calendar's bounds
            if not warned:
                warned = True
                logger.warning("calendar {}: {}; treating the market as open", calendar, exc)
            return True

    return market_open


class Sessions:
    """The sessions of one exchange calendar, each ``[open, close)`` in UTC epoch seconds,
    sorted; early closes are the calendar's. A session with a lunch break counts as one
    ``[open, close)``. Build with ``sessions_of(name)`` (cached per calendar)."""

    def __init__(self, name: str, opens: list[float], closes: list[float]) -> None:
        self.name = name
        self.opens = opens
        self.closes = closes
        self.close_of = dict(zip(opens, closes, strict=True))  # open -> close

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        """The first open and the last close the calendar knows."""
        return _utc(self.opens[0]), _utc(self.closes[-1])

    def of(self, t: float) -> tuple[float, float] | None:
        """The session holding ``t`` (``open <= t < close``), or ``None`` outside every one."""
        i = bisect.bisect_right(self.opens, t) - 1
        if i >= 0 and t < self.closes[i]:
            return self.opens[i], self.closes[i]
        return None

    def first_open_ending_after(self, t: float) -> float:
        """The open of the first session closing after ``t`` (``inf`` past the last one):
        every session opening before it has closed by ``t``."""
        i = bisect.bisect_right(self.closes, t)
        return self.opens[i] if i < len(self.opens) else math.inf

    def close_from(self, t: float) -> float:
        """The close of the first session opening at or after ``t`` (``inf`` if none)."""
        i = bisect.bisect_left(self.opens, t)
        return self.closes[i] if i < len(self.closes) else math.inf

    def open_after(self, t: float) -> float:
        """The open of the first session opening after ``t`` (``inf`` if none)."""
        i = bisect.bisect_right(self.opens, t)
        return self.opens[i] if i < len(self.opens) else math.inf


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def sessions_of(name: str) -> Sessions:
    """The sessions of calendar ``name`` (``ValueError`` naming it if unknown)."""
    with _building:
        return _sessions(name)


@lru_cache(maxsize=8)
def _sessions(name: str) -> Sessions:
    cal = _build(name)
    with _quiet():
        schedule = cal.schedule
    opens = [t.timestamp() for t in schedule["open"]]
    closes = [t.timestamp() for t in schedule["close"]]
    return Sessions(name, opens, closes)
