"""Historical bars from IB: bar sizes, IB's request limits per bar size, request planning and
one request through ib_async with IB's answers sorted out.

- ``BAR_SIZES`` / ``bar_size_setting``: mdp resolutions and IB's ``barSizeSetting``.
- ``MAX_DURATION``: the longest duration IB serves per bar size (IB's "step sizes" table:
  3600 S of 5-second bars, 1 D of minutes, 1 W of 5 minutes, 1 M of hours, 1 Y of days).
- ``plan_requests``: the spans to fetch cut into requests no longer than that, merging
  spans that fit one request.
- ``fetch_history``: one ``reqHistoricalData``; IB's error 162 is a pacing violation
  (``PacingViolation``: wait and retry), "no data" (an empty result, recorded as such) or a
  refusal (``HistoryRequestError``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from mdp_core.models import Bar, parse_resolution, resolution_seconds
from mdp_core.providers.base import ProviderError

__all__ = [
    "BAR_SIZES",
    "MAX_DURATION",
    "HistoryRequest",
    "HistoryRequestError",
    "PacingViolation",
    "bar_from_ib",
    "bar_size_setting",
    "classify_history_error",
    "duration_text",
    "fetch_history",
    "max_duration",
    "plan_requests",
]

#: mdp resolution -> IB barSizeSetting (1 second bars are not offered: the simulated
#: gateway's bars are built from 5-second bars).
BAR_SIZES: dict[str, str] = {
    "5s": "5 secs", "10s": "10 secs", "15s": "15 secs", "30s": "30 secs", "1m": "1 min",
    "5m": "5 mins", "15m": "15 mins", "30m": "30 mins", "1h": "1 hour", "1d": "1 day",
}  # fmt: skip
_DAY = 86_400
#: bar seconds -> the longest duration (seconds) IB serves for that bar size.
MAX_DURATION: dict[int, int] = {
    1: 1800, 5: 3600, 10: 14_400, 15: 14_400, 30: 28_800, 60: _DAY, 120: 2 * _DAY,
    180: 7 * _DAY, 300: 7 * _DAY, 600: 7 * _DAY, 900: 7 * _DAY, 1200: 7 * _DAY,
    1800: 30 * _DAY, 3600: 30 * _DAY, 7200: 30 * _DAY, 10_800: 30 * _DAY, 14_400: 30 * _DAY,
    28_800: 30 * _DAY, _DAY: 365 * _DAY,
}  # fmt: skip

PACING_TEXT = "pacing violation"
_NOTICE_CODES = frozenset({165, 10167})  # informational, not a refusal
_NO_DATA_TEXTS = ("returned no data", "no data", "no historical market data")


def bar_size_setting(resolution: str) -> str:
    """IB's barSizeSetting for an mdp resolution; ``ValueError`` naming the supported ones."""
    label = parse_resolution(resolution)
    if label not in BAR_SIZES:
        raise ValueError(
            f"resolution {resolution!r} cannot be fetched from IB's history: expected one of "
            f"{', '.join(BAR_SIZES)}"
        )
    return BAR_SIZES[label]


def max_duration(bar_seconds: int) -> int:
    """The longest duration (seconds) IB serves for bars of ``bar_seconds``."""
    if bar_seconds not in MAX_DURATION:
        raise ValueError(f"no IB bar size of {bar_seconds} seconds")
    return MAX_DURATION[bar_seconds]


def duration_text(seconds: int) -> str:
    """A durationStr for ``seconds``: ``N S`` up to a day (IB takes seconds up to 86400),
    whole days ``N D`` beyond."""
    if seconds <= _DAY:
        return f"{max(1, seconds)} S"
    return f"{-(-seconds // _DAY)} D"


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """One historical request: the bars of ``resolution`` starting in ``[start, end)``.

    Sent as ``endDateTime=end`` and a duration covering the span (``duration``)."""

    symbol: str
    resolution: str
    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    @property
    def duration(self) -> str:
        return duration_text(self.seconds)


def _floor(t: datetime, step: int) -> datetime:
    return datetime.fromtimestamp(math.floor(t.timestamp() / step) * step, UTC)


def _ceil(t: datetime, step: int) -> datetime:
    return datetime.fromtimestamp(math.ceil(t.timestamp() / step) * step, UTC)


Bridge = Callable[[datetime, datetime], bool]


def _always(lo: datetime, hi: datetime) -> bool:
    return True


def plan_requests(
    symbol: str,
    resolution: str,
    spans: Sequence[tuple[datetime, datetime]],
    bridgeable: Bridge = _always,
) -> list[HistoryRequest]:
    """The requests that fetch every bar of ``resolution`` starting in ``spans`` (sorted,
    disjoint, UTC), in time order.

    Spans are widened to whole bars (aligned to the epoch; daily bars to UTC days). A span
    longer than IB serves in one request for that bar size is cut into requests of the
    longest duration. Consecutive spans share a request when their whole stretch fits in
    one and ``bridgeable(gap_start, gap_end)`` says the gap between them may be asked for
    too (e.g. a night between two sessions when only regular hours are fetched); by default
    every gap may."""
    label = parse_resolution(resolution)
    bar_size_setting(label)
    step = resolution_seconds(label)
    longest = max(max_duration(step), step)
    out: list[HistoryRequest] = []
    current: tuple[datetime, datetime] | None = None
    for raw_lo, raw_hi in spans:
        lo, hi = _floor(raw_lo, step), _ceil(raw_hi, step)
        if current is not None and lo < current[1]:
            lo = current[1]  # widened neighbours overlap: never ask twice
        if hi <= lo:
            continue
        if (
            current is not None
            and (hi - current[0]).total_seconds() <= longest
            and (lo == current[1] or bridgeable(current[1], lo))
        ):
            current = (current[0], hi)
            continue
        if current is not None:
            out.append(HistoryRequest(symbol, label, *current))
        while (hi - lo).total_seconds() > longest:
            cut = lo + timedelta(seconds=longest)
            out.append(HistoryRequest(symbol, label, lo, cut))
            lo = cut
        current = (lo, hi)
    if current is not None:
        out.append(HistoryRequest(symbol, label, *current))
    return out


class PacingViolation(ProviderError):
    """IB refused a historical request for pacing (error 162): wait, then ask again."""


class HistoryRequestError(ProviderError):
    """IB refused a historical request for another reason (the message says which)."""


def classify_history_error(message: str) -> str:
    """``"pacing"``, ``"no_data"`` or ``"refused"`` for the text of an error 162."""
    text = message.lower()
    if PACING_TEXT in text:
        return "pacing"
    if any(t in text for t in _NO_DATA_TEXTS):
        return "no_data"
    return "refused"


def bar_from_ib(symbol: str, item: Any, resolution: str, source: str) -> Bar:
    """A ``Bar`` from an ib_async ``BarData`` (``formatDate=2``: intraday dates are aware
    datetimes; daily bars are dates, stored as that day's midnight UTC)."""
    when = item.date
    if isinstance(when, datetime):
        ts = when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    elif isinstance(when, date):
        ts = datetime(when.year, when.month, when.day, tzinfo=UTC)
    else:
        raise ValueError(f"bar date {when!r} is neither a datetime nor a date")
    volume = float(item.volume)
    wap = float(item.average)
    count = int(item.barCount) if item.barCount is not None else -1
    return Bar(
        symbol=symbol,
        ts=ts,
        open=float(item.open),
        high=float(item.high),
        low=float(item.low),
        close=float(item.close),
        volume=volume if volume >= 0 else 0.0,  # -1: no volume (MIDPOINT/BID/ASK)
        resolution=resolution,
        vwap=wap if 0 < wap < float("inf") else None,
        trade_count=count if count >= 0 else None,
        source=source,
    )


async def fetch_history(
    ib: Any,
    contract: Any,
    request: HistoryRequest,
    *,
    what_to_show: str,
    use_rth: bool,
    timeout: float,
    source: str = "ibkr",
) -> list[Bar]:
    """Bars of ``request`` (only those starting inside its span), oldest first.

    Raises ``PacingViolation`` (error 162, pacing), ``HistoryRequestError`` (another
    refusal, or no answer within ``timeout`` seconds); "no data" is an empty list."""
    errors: dict[int, list[tuple[int, str]]] = {}

    def on_error(req_id: int, code: int, message: str, *args: Any) -> None:
        errors.setdefault(req_id, []).append((code, message))

    # ib_async ends a refused request with an empty list and reports why only through
    # errorEvent (emitted before the awaiting coroutine resumes), keyed by the request id.
    ib.errorEvent += on_error
    try:
        async with asyncio.timeout(timeout):
            bars = await ib.reqHistoricalDataAsync(
                contract,
                endDateTime=request.end,
                durationStr=request.duration,
                barSizeSetting=BAR_SIZES[request.resolution],
                whatToShow=what_to_show,
                useRTH=use_rth,
                formatDate=2,
                timeout=0,
            )
    except TimeoutError:
        raise HistoryRequestError(
            f"no answer to the historical request for {request.symbol} "
            f"[{request.start.isoformat()}, {request.end.isoformat()}) within {timeout:g}s"
        ) from None
    finally:
        ib.errorEvent -= on_error
    if not bars:
        for code, message in errors.get(getattr(bars, "reqId", -1), ()):
            if code in _NOTICE_CODES or 2100 <= code < 2200:
                continue
            kind = classify_history_error(message) if code == 162 else "refused"
            if kind == "pacing":
                raise PacingViolation(f"IB error 162: {message}")
            if kind == "refused":
                raise HistoryRequestError(f"IB error {code}: {message}")
    out: list[Bar] = []
    for item in bars or ():
        bar = bar_from_ib(request.symbol, item, request.resolution, source)
        if request.start <= bar.ts < request.end:
            out.append(bar)
    return out
