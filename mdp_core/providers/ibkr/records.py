"""Per-symbol state of the IBKR source and the copies of ib_async objects into records.

ib_async hands out *mutable* objects (``Ticker``, ``RealTimeBarList``) that it keeps updating;
the source copies what it needs into immutable ``Quote``/``Bar`` records inside synchronous
callbacks and never lets those objects escape.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from mdp_core.models import Bar

__all__ = ["BAR_SECONDS", "SymbolState", "bar_from_history", "bar_from_realtime"]

BAR_SECONDS = 5  # IB real-time bars are always 5 seconds
_INF = math.inf


class SymbolState:
    """What the source knows about one symbol across (re)subscriptions.

    ``contract`` is the qualified contract (None until qualified); ``subscription`` the live
    ib_async object (a Ticker or a RealTimeBarList) of the current connection; ``updated``
    the monotonic time of its last update (for the staleness watchdog); ``last_ts`` the
    time of the last record emitted (quotes: strictly increasing per symbol; bars: the
    high-water mark used to drop duplicates and to know where a backfill starts);
    ``last_values`` the last quote's values (unchanged updates are skipped); ``held`` the
    live bars held back while a backfill runs.
    """

    __slots__ = (
        "contract",
        "held",
        "last_ts",
        "last_values",
        "subscription",
        "symbol",
        "updated",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.contract: Any = None
        self.subscription: Any = None
        self.updated = 0.0
        self.last_ts: datetime | None = None
        self.last_values: tuple[float | None, ...] | None = None
        self.held: list[Bar] = []


def _volume(value: Any) -> float:
    volume = float(value)
    return volume if volume >= 0.0 else 0.0  # -1: IB has no volume (MIDPOINT/BID/ASK bars)


def _vwap(value: Any) -> float | None:
    wap = float(value)
    return wap if 0.0 < wap < _INF else None  # -1 / 0 / NaN: none


def _count(value: Any) -> int | None:
    if value is None:
        return None
    count = int(value)
    return count if count >= 0 else None


def bar_from_realtime(symbol: str, rt: Any, source: str) -> Bar:
    """A 5-second ``Bar`` from an ib_async ``RealTimeBar`` (``ts`` = bar start, UTC)."""
    return Bar(
        symbol=symbol,
        ts=_utc(rt.time),
        open=float(rt.open_),
        high=float(rt.high),
        low=float(rt.low),
        close=float(rt.close),
        volume=_volume(rt.volume),
        resolution="5s",
        vwap=_vwap(rt.wap),
        trade_count=_count(rt.count),
        source=source,
    )


def bar_from_history(symbol: str, bd: Any, source: str) -> Bar:
    """A 5-second ``Bar`` from an ib_async historical ``BarData`` (``formatDate=2``)."""
    return Bar(
        symbol=symbol,
        ts=_utc(bd.date),
        open=float(bd.open),
        high=float(bd.high),
        low=float(bd.low),
        close=float(bd.close),
        volume=_volume(bd.volume),
        resolution="5s",
        vwap=_vwap(bd.average),
        trade_count=_count(bd.barCount),
        source=source,
    )


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # ib_async gives aware times; be safe with naive ones
            return value.replace(tzinfo=UTC)
        return value if value.tzinfo is UTC else value.astimezone(UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    raise ValueError(f"bar time {value!r} is not a datetime or epoch seconds")
