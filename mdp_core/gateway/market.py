"""Market models: 5-second bars and their trade ticks as pure functions of time.

A model answers "what happened in the 5-second bar starting at epoch second ``t``" for any
``t`` (a multiple of 5), the same way every time for the same configuration. That is what
lets the gateway stream live bars, answer historical requests for any period (including
periods a client missed while disconnected), and tell a test exactly which bars exist
(``bars_between``).

Two models:

- ``RandomWalkModel`` (in ``random_walk``): a seeded geometric random walk, computed a
  block of 4096 bars at a time with numpy; each bar's OHLCV is exactly the aggregate of
  its trades.
- ``ReplayModel``: real 1-minute bars from a file, mapped cyclically onto simulated time.
  Each minute is expanded into twelve 5-second bars whose aggregate is exactly that
  minute's open/high/low/close/volume, plus plausible trades inside each bar.

``SimClock`` maps a real clock onto simulated epoch time with a compression factor.
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
import re
import time
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, NamedTuple

from mdp_core.logs import logger
from mdp_core.models import Bar, parse_resolution

__all__ = [
    "BAR_SECONDS",
    "BLOCK_SECONDS",
    "MarketModel",
    "MinuteRow",
    "ReplayModel",
    "SimBar",
    "SimClock",
    "SimTick",
    "aggregate_bars",
    "bars_in_windows",
    "load_minute_file",
    "replay_symbol",
    "to_epoch",
]

BAR_SECONDS = 5
_BLOCK_LEVELS = 12
#: Spacing of the random walk's independent anchors (5 s * 2**12, about 5.7 hours).
BLOCK_SECONDS = BAR_SECONDS * 2**_BLOCK_LEVELS
WHAT_TO_SHOW: tuple[str, ...] = ("TRADES", "MIDPOINT", "BID", "ASK")


def to_epoch(value: float | datetime) -> float:
    """Epoch seconds of a timezone-aware datetime (or a number, returned as float)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: expected a timezone-aware datetime")
        return value.timestamp()
    return float(value)


def _floor(t: float, step: int) -> int:
    return math.floor(t / step) * step


def _ceil(t: float, step: int) -> int:
    return math.ceil(t / step) * step


def _seed(*parts: object) -> int:
    """A stable 64-bit seed for ``parts`` (independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class SimTick:
    """One trade and the quote around it. ``time`` is simulated epoch seconds (ms precision)."""

    symbol: str
    time: float
    bid: float
    bid_size: float
    ask: float
    ask_size: float
    last: float
    last_size: float


@dataclass(frozen=True, slots=True)
class SimBar:
    """OHLCV of ``[time, time + seconds)``; ``time`` is the start in epoch seconds.

    Bars built from quotes (``MIDPOINT``/``BID``/``ASK``) carry ``volume == wap == -1`` and
    ``count == -1``, like IB's.
    """

    symbol: str
    time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    wap: float
    count: int
    seconds: int = BAR_SECONDS

    @property
    def start(self) -> datetime:
        """The bar's start as a UTC datetime."""
        return datetime.fromtimestamp(self.time, UTC)

    def to_bar(self, source: str = "gateway") -> Bar:
        """The equivalent ``mdp_core.models.Bar``."""
        return Bar(
            symbol=self.symbol,
            ts=self.start,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=max(self.volume, 0.0),
            resolution=parse_resolution(timedelta(seconds=self.seconds)),
            vwap=self.wap if self.wap > 0 else None,
            trade_count=self.count if self.count >= 0 else None,
            source=source,
        )


def aggregate_bars(bars: Sequence[SimBar], start: int, seconds: int) -> SimBar:
    """One bar of ``seconds`` starting at ``start`` from consecutive ``bars`` (not empty).

    Open of the first, close of the last, max high, min low, summed volume and count, and
    the volume-weighted wap (quote bars keep -1).
    """
    first = bars[0]
    if len(bars) == 1 and seconds == first.seconds:
        return first
    volume = sum(b.volume for b in bars)
    quote_bar = first.count < 0
    if quote_bar:
        wap, count, volume = -1.0, -1, -1.0
    else:
        count = sum(b.count for b in bars)
        wap = (
            round(sum(b.wap * b.volume for b in bars) / volume, 4) if volume > 0 else bars[-1].close
        )
    return SimBar(
        symbol=first.symbol,
        time=start,
        open=first.open,
        high=max(b.high for b in bars),
        low=min(b.low for b in bars),
        close=bars[-1].close,
        volume=volume,
        wap=wap,
        count=count,
        seconds=seconds,
    )


def _bar_from_ticks(symbol: str, start: int, ticks: Sequence[SimTick]) -> SimBar:
    prices = [t.last for t in ticks]
    volume = float(sum(t.last_size for t in ticks))
    return SimBar(
        symbol=symbol,
        time=start,
        open=prices[0],
        high=max(prices),
        low=min(prices),
        close=prices[-1],
        volume=volume,
        wap=round(sum(t.last * t.last_size for t in ticks) / volume, 4),
        count=len(ticks),
    )


def _quote_bar(symbol: str, start: int, ticks: Sequence[SimTick], what_to_show: str) -> SimBar:
    """The bar of the ticks' bids (``BID``), asks (``ASK``) or else midpoints; IB sends no
    volume, WAP or count for those."""
    if what_to_show == "BID":
        values = [t.bid for t in ticks]
    elif what_to_show == "ASK":
        values = [t.ask for t in ticks]
    else:
        values = [round((t.bid + t.ask) / 2, 3) for t in ticks]
    return SimBar(symbol, start, values[0], max(values), min(values), values[-1], -1.0, -1.0, -1)


def _quote_around(rng: random.Random, symbol: str, at: float, last: float, size: float) -> SimTick:
    r = rng.random
    spread = 1 + int(r() * 3)  # cents
    bid = max(0.01, round(last - int(r() * (spread + 1)) * 0.01, 2))
    return SimTick(
        symbol=symbol,
        time=at,
        bid=bid,
        bid_size=float((1 + int(r() * 20)) * 100),
        ask=round(bid + spread * 0.01, 2),
        ask_size=float((1 + int(r() * 20)) * 100),
        last=last,
        last_size=size,
    )


class SimClock:
    """Simulated epoch time: ``start + (clock() - clock_at_creation) * time_compression``.

    ``clock`` is any monotonic seconds counter (inject one to control time in tests);
    ``start`` defaults to the current wall time, so with compression 1 simulated time is
    real time.
    """

    def __init__(
        self,
        start: float | datetime | None = None,
        time_compression: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (time_compression > 0 and math.isfinite(time_compression)):
            raise ValueError(
                f"invalid time_compression {time_compression!r}: expected a finite number > 0"
            )
        self.start = time.time() if start is None else to_epoch(start)
        self.time_compression = float(time_compression)
        self._clock = clock
        self._origin = clock()

    def now(self) -> float:
        """Current simulated time, epoch seconds."""
        return self.start + (self._clock() - self._origin) * self.time_compression


_Slot = tuple[SimBar, tuple[SimTick, ...]]


class MarketModel(ABC):
    """5-second bars and ticks of one symbol, a pure function of the bar start time."""

    def __init__(self, symbol: str, cache_size: int = 4096) -> None:
        self.symbol = symbol
        self._cache: OrderedDict[int, _Slot | None] = OrderedDict()
        self._cache_size = cache_size

    @abstractmethod
    def _generate(self, start: int) -> _Slot | None:
        """The bar starting at ``start`` (a multiple of 5) and its ticks, or None."""

    def slot(self, start: int) -> _Slot | None:
        """Bar and ticks of the 5-second bar starting at ``start`` (None: no bar there)."""
        if start % BAR_SECONDS:
            raise ValueError(f"bar start {start} is not a multiple of {BAR_SECONDS} seconds")
        cache = self._cache
        if start in cache:
            cache.move_to_end(start)
            return cache[start]
        value = self._generate(start)
        cache[start] = value
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return value

    def bar(self, start: int, what_to_show: str = "TRADES") -> SimBar | None:
        """The 5-second bar starting at ``start``, of trades or of quotes."""
        slot = self.slot(start)
        if slot is None:
            return None
        bar, ticks = slot
        if what_to_show == "TRADES":
            return bar
        if what_to_show not in WHAT_TO_SHOW:
            raise ValueError(f"unsupported whatToShow {what_to_show!r}: expected {WHAT_TO_SHOW}")
        if not ticks:
            return None
        return _quote_bar(self.symbol, start, ticks, what_to_show)

    def ticks(self, start: int) -> tuple[SimTick, ...]:
        """Ticks of the 5-second bar starting at ``start``, in time order."""
        slot = self.slot(start)
        return slot[1] if slot else ()

    def bars_between(
        self, start: float | datetime, end: float | datetime, what_to_show: str = "TRADES"
    ) -> list[SimBar]:
        """Every 5-second bar whose start lies in ``[start, end)``, in time order."""
        out = []
        for t in range(_ceil(to_epoch(start), BAR_SECONDS), _ceil(to_epoch(end), BAR_SECONDS), 5):
            bar = self.bar(t, what_to_show)
            if bar is not None:
                out.append(bar)
        return out

    def ticks_between(self, start: float | datetime, end: float | datetime) -> list[SimTick]:
        """Every tick whose time lies in ``[start, end)``, in time order."""
        lo, hi = to_epoch(start), to_epoch(end)
        out: list[SimTick] = []
        for t in range(_floor(lo, BAR_SECONDS), _ceil(hi, BAR_SECONDS), BAR_SECONDS):
            out.extend(tick for tick in self.ticks(t) if lo <= tick.time < hi)
        return out

    def last_tick_before(self, at: float, lookback_bars: int = 720) -> SimTick | None:
        """The latest tick with ``time < at``, looking back at most ``lookback_bars`` bars."""
        start = _floor(at, BAR_SECONDS)
        for i in range(lookback_bars):
            ticks = [t for t in self.ticks(start - i * BAR_SECONDS) if t.time < at]
            if ticks:
                return ticks[-1]
        return None

    def window_bars(
        self,
        start: int,
        end: int,
        seconds: int,
        what_to_show: str = "TRADES",
        sessions: Sequence[tuple[float, float]] | None = None,
    ) -> list[SimBar]:
        """Bars of ``seconds`` (a multiple of 5) for every epoch-aligned window inside
        ``[start, end)``, each the exact aggregate (``aggregate_bars``) of its 5-second bars;
        with ``sessions`` (sorted, disjoint ``[lo, hi)`` epoch intervals) only the 5-second
        bars starting inside one of them count. Windows without bars are left out."""
        out = []
        for w in range(_ceil(start, seconds), _floor(end, seconds), seconds):
            slots = range(w, w + seconds, BAR_SECONDS)
            if sessions is not None:
                slots = [t for t in slots if _inside(t, sessions)]  # type: ignore[assignment]
            parts = [b for t in slots if (b := self.bar(t, what_to_show))]
            if parts:
                out.append(aggregate_bars(parts, w, seconds))
        return out

    def partial_bar(self, start: int, before: float, what_to_show: str = "TRADES") -> SimBar | None:
        """The bar starting at ``start`` as it stands at time ``before`` (ticks before it)."""
        if before >= start + BAR_SECONDS:
            return self.bar(start, what_to_show)
        ticks = [t for t in self.ticks(start) if t.time < before]
        if not ticks:
            return None
        if what_to_show == "TRADES":
            return _bar_from_ticks(self.symbol, start, ticks)
        return _quote_bar(self.symbol, start, ticks, what_to_show)


class MinuteRow(NamedTuple):
    """One real 1-minute bar; ``time`` is the minute's start, epoch seconds (UTC)."""

    time: int
    open: float
    high: float
    low: float
    close: float
    volume: float


_NT_LINE = re.compile(r"^\d{8} \d{6};")


def load_minute_file(
    path: str | Path, stamp: Literal["auto", "start", "end"] = "auto"
) -> list[MinuteRow]:
    """Read 1-minute OHLCV rows from ``path``, sorted by time, start-stamped.

    Two formats (see data/README.md): ``yyyymmdd HHMMSS;o;h;l;c;v`` without a header
    (NinjaTrader export, end-stamped) and CSV with a header holding ``date, open, high,
    low, close, volume`` (ISO dates, start-stamped). ``stamp="auto"`` assumes those
    conventions and logs the assumption. Rows with inconsistent OHLC, prices <= 0 or a
    negative volume are skipped and counted in a warning.
    """
    path = Path(path)
    with path.open(newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        raw: list[tuple[datetime, float, float, float, float, float]] = []
        if _NT_LINE.match(first):
            fmt, assumed = "yyyymmdd HHMMSS;o;h;l;c;v", "end"
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    stamp_text, *values = line.strip().split(";")
                    when = datetime.strptime(stamp_text, "%Y%m%d %H%M%S").replace(tzinfo=UTC)
                    o, h, lo, c, v = map(float, values)
                    raw.append((when, o, h, lo, c, v))
                except ValueError as exc:
                    raise ValueError(f"{path}:{n}: cannot parse {line.strip()!r}: {exc}") from exc
        else:
            fmt, assumed = "CSV with date,open,high,low,close,volume", "start"
            reader = csv.DictReader(fh)
            missing = {"date", "open", "high", "low", "close", "volume"} - set(
                reader.fieldnames or ()
            )
            if missing:
                raise ValueError(
                    f"{path}: unrecognised minute-bar file (missing columns {sorted(missing)}): "
                    "expected 'yyyymmdd HHMMSS;o;h;l;c;v' lines or a CSV with "
                    "date,open,high,low,close,volume"
                )
            for n, row in enumerate(reader, 2):
                try:
                    when = datetime.fromisoformat(row["date"])
                    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
                    raw.append(
                        (when, float(row["open"]), float(row["high"]), float(row["low"]),
                         float(row["close"]), float(row["volume"]))
                    )  # fmt: skip
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: cannot parse row {row!r}: {exc}") from exc
    if stamp == "auto":
        stamp = assumed  # type: ignore[assignment]
        logger.info(f"replay file {path.name}: format {fmt}, assuming bars are {stamp}-stamped")
    shift = -60 if stamp == "end" else 0
    rows: dict[int, MinuteRow] = {}
    bad = 0
    for when, o, h, lo, c, v in raw:
        t = int(when.timestamp()) + shift
        if t % 60 or not (0 < lo <= min(o, c) and max(o, c) <= h) or not v >= 0:
            bad += 1
            continue
        rows[t] = MinuteRow(t, o, h, lo, c, v)
    if bad:
        logger.warning(f"replay file {path.name}: skipped {bad} rows (unaligned or inconsistent)")
    if not rows:
        raise ValueError(f"{path}: no usable minute bars")
    return [rows[t] for t in sorted(rows)]


def replay_symbol(path: str | Path) -> str:
    """The symbol a replay file is named for: ``SPY_1min_2011-01.csv`` -> ``SPY``."""
    return Path(path).stem.split("_")[0].upper()


def _split(total: float, n: int, rng: random.Random, minimum: int = 0) -> list[float]:
    """``n`` random parts summing exactly to ``total`` (integers when ``total`` is one)."""
    weights = [0.5 + rng.random() for _ in range(n)]
    scale = sum(weights)
    if total != int(total):
        parts = [total * w / scale for w in weights[:-1]]
        return [*parts, total - sum(parts)]
    whole = int(total)
    floor_each = min(minimum, whole // n)
    spare = whole - floor_each * n
    shares = [spare * w / scale for w in weights]
    ints = [int(s) for s in shares]
    by_fraction = sorted(range(n), key=lambda i: shares[i] - ints[i], reverse=True)
    for i in by_fraction[: spare - sum(ints)]:
        ints[i] += 1
    return [float(floor_each + i) for i in ints]


class ReplayModel(MarketModel):
    """Real 1-minute bars replayed on simulated time, expanded into 5-second bars.

    Simulated minute ``m`` shows file minute ``first + ((m - anchor) mod period)``, where
    ``period`` spans the whole file: the file starts at simulated time ``anchor`` and
    loops; an ``anchor`` inside the file's span replays the file at its own times.
    Minutes missing from the file have no bars (real gaps stay gaps).

    The twelve 5-second bars of a minute aggregate exactly to its open/high/low/close/
    volume: the path visits the high and the low in seeded bars and is clamped to the
    minute's range. Each bar has seeded trades summing to its volume (none when its volume
    is 0); with 4 or more trades they touch its open, high, low and close.
    """

    def __init__(
        self,
        symbol: str,
        rows: Sequence[MinuteRow],
        anchor: float,
        seed: int = 1,
        *,
        trades_per_bar: tuple[int, int] = (1, 8),
        cache_size: int = 4096,
    ) -> None:
        super().__init__(symbol, cache_size)
        if not rows:
            raise ValueError(f"no minute bars to replay for {symbol}")
        self.rows = {r.time: r for r in rows}
        self._times = sorted(self.rows)
        self.first = self._times[0]
        self.period = self._times[-1] - self.first + 60
        # A start inside the file's span replays it at its own times; otherwise the file
        # begins at the start.
        inside = self.first <= anchor < self.first + self.period
        self.anchor = self.first if inside else _floor(anchor, 60)
        self.seed = seed
        self.trades_per_bar = trades_per_bar
        self._minutes: OrderedDict[int, tuple[_Slot | None, ...]] = OrderedDict()

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        anchor: float,
        symbol: str | None = None,
        seed: int = 1,
        *,
        stamp: Literal["auto", "start", "end"] = "auto",
        trades_per_bar: tuple[int, int] = (1, 8),
    ) -> ReplayModel:
        """A model for the file at ``path``; the symbol defaults to the file name's prefix
        before the first ``_`` (``SPY_1min_2011-01.csv`` -> ``SPY``)."""
        path = Path(path)
        symbol = symbol or replay_symbol(path)
        return cls(
            symbol, load_minute_file(path, stamp), anchor, seed, trades_per_bar=trades_per_bar
        )

    def file_minute(self, sim_minute: int) -> int:
        """The file minute (start, epoch) shown at simulated minute ``sim_minute``."""
        return self.first + (sim_minute - self.anchor) % self.period

    def _generate(self, start: int) -> _Slot | None:
        minute = _floor(start, 60)
        slots = self._minutes.get(minute)
        if slots is None:
            slots = self._expand(minute)
            self._minutes[minute] = slots
            if len(self._minutes) > 64:
                self._minutes.popitem(last=False)
        return slots[(start - minute) // BAR_SECONDS]

    def _expand(self, minute: int) -> tuple[_Slot | None, ...]:
        row = self.rows.get(self.file_minute(minute))
        if row is None:
            return (None,) * 12
        o, h, lo, c = row.open, row.high, row.low, row.close
        rng = random.Random(_seed(self.seed, self.symbol, "minute", minute))
        i_high, i_low = rng.randrange(12), rng.randrange(12)
        waypoints = sorted(
            [
                (0.0, o),
                (12.0, c),
                (i_high + rng.uniform(0.2, 0.8), h),
                (i_low + rng.uniform(0.2, 0.8), lo),
            ]
        )
        xs = [x for x, _ in waypoints]
        path = [o]
        for k in range(1, 12):
            j = min(bisect_right(xs, k), len(xs) - 1)
            (x0, y0), (x1, y1) = waypoints[j - 1], waypoints[j]
            y = y0 + (y1 - y0) * (k - x0) / (x1 - x0) if x1 > x0 else y1
            y += (h - lo) * 0.1 * rng.uniform(-1.0, 1.0)
            path.append(min(max(round(y, 2), lo), h))
        path.append(c)
        volumes = _split(row.volume, 12, rng, minimum=1)
        out: list[_Slot | None] = []
        for i in range(12):
            start = minute + i * BAR_SECONDS
            bo, bc = path[i], path[i + 1]
            bh = h if i == i_high else max(bo, bc)
            bl = lo if i == i_low else min(bo, bc)
            ticks = self._trades(rng, start, bo, bh, bl, bc, volumes[i])
            wap = round(sum(t.last * t.last_size for t in ticks) / volumes[i], 4) if ticks else bc
            bar = SimBar(self.symbol, start, bo, bh, bl, bc, volumes[i], wap, len(ticks))
            out.append((bar, ticks))
        return tuple(out)

    def _trades(
        self, rng: random.Random, start: int, o: float, h: float, lo: float, c: float, volume: float
    ) -> tuple[SimTick, ...]:
        if volume <= 0:
            return ()
        n = rng.randint(*self.trades_per_bar)
        if volume == int(volume):
            n = max(1, min(n, int(volume)))
        extremes = [h, lo] if rng.random() < 0.5 else [lo, h]
        if n == 1:
            prices = [c]
        elif n == 2:
            prices = [o, c]
        elif n == 3:
            prices = [o, extremes[0] if extremes[0] not in (o, c) else extremes[1], c]
        else:
            middle = [round(rng.uniform(lo, h), 2) for _ in range(n - 4)]
            prices = [o, *extremes, *middle, c]
        sizes = _split(volume, n, rng, minimum=1)
        offsets = sorted(min(round(rng.random() * BAR_SECONDS, 3), 4.999) for _ in range(n))
        return tuple(
            _quote_around(rng, self.symbol, round(start + u, 3), p, s)
            for u, p, s in zip(offsets, prices, sizes, strict=True)
        )


def bars_in_windows(
    model: MarketModel,
    start: int,
    end: int,
    seconds: int,
    what_to_show: str = "TRADES",
    sessions: Sequence[tuple[float, float]] | None = None,
) -> list[SimBar]:
    """``model.window_bars(...)``: bars of ``seconds`` for every epoch-aligned window inside
    ``[start, end)`` (empty windows left out), of the 5-second bars inside ``sessions``."""
    return model.window_bars(start, end, seconds, what_to_show, sessions)


def _inside(t: float, sessions: Sequence[tuple[float, float]]) -> bool:
    """Whether ``t`` lies in one of the sorted, disjoint ``[lo, hi)`` ``sessions``."""
    i = bisect_right(sessions, (t, math.inf)) - 1
    return i >= 0 and sessions[i][0] <= t < sessions[i][1]
