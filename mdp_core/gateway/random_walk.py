"""``RandomWalkModel``: seeded trades, quotes and 5-second bars of one instrument, computed a
block of 4096 bars (about 5.7 hours) at a time with numpy.

Everything is a pure function of (seed, symbol, time): live ticks, real-time bars and
historical bars of any size come from the same block arrays, so a historical 1-hour bar is
exactly the aggregate of the twelve-times-sixty 5-second bars streamed live. Computing a
block costs about a millisecond, which is what lets the gateway answer a year of daily bars
or a month of minutes at once.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from mdp_core.gateway.market import (
    BAR_SECONDS,
    BLOCK_SECONDS,
    WHAT_TO_SHOW,
    MarketModel,
    SimBar,
    SimTick,
    _ceil,
    _floor,
    _seed,
    _Slot,
)

__all__ = ["RandomWalkModel"]

_BARS = BLOCK_SECONDS // BAR_SECONDS  # 4096 bars per block
_DAY = 86_400.0
_BLOCKS_KEPT = 3  # per model: the current block, its neighbour, one more

# Plausible starting prices for well-known symbols; others get a seeded price.
_BASE_PRICES = {
    "AAPL": 190.0, "MSFT": 420.0, "SPY": 500.0, "QQQ": 440.0, "GOOGL": 170.0,
    "AMZN": 180.0, "NVDA": 120.0, "TSLA": 250.0, "META": 500.0, "IWM": 200.0,
}  # fmt: skip

Array = Any  # numpy arrays (numpy's typing adds nothing here)


@dataclass(eq=False, slots=True)
class _Block:
    """The trades of 4096 consecutive 5-second bars and those bars' values.

    Prices are kept in ticks (integers); ``first[i]:first[i + 1]`` are the trades of bar
    ``i``; ``ms`` is each trade's time in milliseconds since the block's start; ``bars``
    caches the bars' values per whatToShow.
    """

    first: Array
    ms: Array
    last: Array
    size: Array
    bid: Array
    ask: Array
    bid_size: Array
    ask_size: Array
    bars: dict[str, tuple[Array, ...]] = field(default_factory=dict)


class RandomWalkModel(MarketModel):
    """Seeded random walk around ``base_price`` with daily volatility ``volatility``.

    Anchors every ``BLOCK_SECONDS`` are independent draws around the base price (so prices
    stay in a band over long runs); between anchors a Brownian bridge fills the 5-second
    points. Each bar has ``trades_per_bar`` (inclusive range) seeded trades of ``lot_size``
    multiples, each inside a seeded 1-3 tick spread; its OHLCV is exactly their aggregate.
    Prices are multiples of ``tick_size`` (0.01 by default).
    """

    def __init__(
        self,
        symbol: str,
        seed: int = 1,
        *,
        base_price: float | None = None,
        volatility: float = 0.02,
        trades_per_bar: tuple[int, int] = (1, 8),
        tick_size: float = 0.01,
        lot_size: float = 100.0,
        cache_size: int = 4096,
    ) -> None:
        super().__init__(symbol, cache_size)
        lo, hi = trades_per_bar
        if not 1 <= lo <= hi:
            raise ValueError(f"invalid trades_per_bar {trades_per_bar!r}: expected 1 <= lo <= hi")
        if not volatility > 0:
            raise ValueError(f"invalid volatility {volatility!r}: expected a number > 0")
        if not (tick_size > 0 and math.isfinite(tick_size)):
            raise ValueError(f"invalid tick_size {tick_size!r}: expected a price > 0")
        if not lot_size > 0:
            raise ValueError(f"invalid lot_size {lot_size!r}: expected a size > 0")
        self.seed = seed
        if base_price is None:
            base_price = _BASE_PRICES.get(symbol, 20.0 + _seed(seed, symbol, "base") % 48_000 / 100)
        if not base_price > 0:
            raise ValueError(f"invalid base_price {base_price!r}: expected a price > 0")
        self.base_price = float(base_price)
        self.volatility = float(volatility)
        self.trades_per_bar = (lo, hi)
        self.tick_size = float(tick_size)
        self.lot_size = float(lot_size)
        exponent = Decimal(repr(self.tick_size)).normalize().as_tuple().exponent
        self._digits = max(0, -int(exponent))  # decimals of a price
        self._sigma = volatility / math.sqrt(_DAY)  # log-price sd per sqrt(second)
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._paths: OrderedDict[int, Array] = OrderedDict()

    # -- prices --------------------------------------------------------------------------

    def _price(self, ticks: int) -> float:
        return round(ticks * self.tick_size, self._digits)

    def _prices(self, ticks: Array, halves: bool = False) -> Array:
        if halves:
            return np.round(ticks * (self.tick_size / 2), self._digits + 1)
        return np.round(ticks * self.tick_size, self._digits)

    def _anchor(self, block: int) -> float:
        z = random.Random(_seed(self.seed, self.symbol, "anchor", block)).gauss(0.0, 1.0)
        return math.log(self.base_price) + self.volatility * z

    def _path(self, block: int) -> Array:
        """Log-prices at the block's 4097 five-second points (a Brownian bridge between the
        anchors of this block and the next)."""
        values = self._paths.get(block)
        if values is not None:
            self._paths.move_to_end(block)
            return values
        n = _BARS
        values = np.empty(n + 1)
        values[0], values[n] = self._anchor(block), self._anchor(block + 1)
        rng = np.random.Generator(np.random.PCG64(_seed(self.seed, self.symbol, "path", block)))
        step = n
        while step > 1:
            half = step // 2
            sd = self._sigma * math.sqrt(step * BAR_SECONDS) / 2
            i = np.arange(half, n, step)
            values[i] = (values[i - half] + values[i + half]) / 2 + sd * rng.standard_normal(i.size)
            step = half
        self._paths[block] = values
        if len(self._paths) > 2 * _BLOCKS_KEPT:
            self._paths.popitem(last=False)
        return values

    def price_at(self, t: int) -> float:
        """The walk's (unrounded) price at the 5-second point ``t``."""
        block, offset = divmod(t, BLOCK_SECONDS)
        return math.exp(self._path(block)[offset // BAR_SECONDS])

    # -- the block's trades ----------------------------------------------------------------

    def _block(self, block: int) -> _Block:
        found = self._blocks.get(block)
        if found is not None:
            self._blocks.move_to_end(block)
            return found
        found = self._make_block(block)
        self._blocks[block] = found
        if len(self._blocks) > _BLOCKS_KEPT:
            self._blocks.popitem(last=False)
        return found

    def _make_block(self, block: int) -> _Block:
        prices = np.exp(self._path(block))
        p0, p1 = prices[:-1], prices[1:]
        rng = np.random.Generator(np.random.PCG64(_seed(self.seed, self.symbol, "trades", block)))
        lo, hi = self.trades_per_bar
        counts = rng.integers(lo, hi + 1, _BARS)
        first = np.zeros(_BARS + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])
        total = int(first[-1])
        bar = np.repeat(np.arange(_BARS), counts)
        offset = np.minimum(np.rint(rng.random(total) * BAR_SECONDS * 1000), 4999).astype(np.int64)
        ms = np.sort(bar * (BAR_SECONDS * 1000) + offset)  # bars stay together: offset < 5 s
        u = (ms - bar * (BAR_SECONDS * 1000)) / (BAR_SECONDS * 1000.0)
        noise = p0 * self._sigma * math.sqrt(BAR_SECONDS) / 2
        price = p0[bar] + (p1 - p0)[bar] * u + noise[bar] * rng.standard_normal(total)
        last = np.maximum(np.rint(price / self.tick_size), 1).astype(np.int64)
        size = (1 + np.floor(rng.random(total) * 10)) * self.lot_size
        spread = 1 + np.floor(rng.random(total) * 3).astype(np.int64)
        bid = np.maximum(last - np.floor(rng.random(total) * (spread + 1)).astype(np.int64), 1)
        bid_size = (1 + np.floor(rng.random(total) * 20)) * 100.0
        ask_size = (1 + np.floor(rng.random(total) * 20)) * 100.0
        return _Block(
            first=first, ms=ms, last=last, size=size, bid=bid, ask=bid + spread,
            bid_size=bid_size, ask_size=ask_size,
        )  # fmt: skip

    def _bar_arrays(self, blk: _Block, what_to_show: str) -> tuple[Array, ...]:
        """open, high, low, close, volume, wap, count of the block's 4096 bars."""
        found = blk.bars.get(what_to_show)
        if found is not None:
            return found
        starts, ends = blk.first[:-1], blk.first[1:] - 1
        if what_to_show == "TRADES":
            values, halves = blk.last, False
        elif what_to_show == "BID":
            values, halves = blk.bid, False
        elif what_to_show == "ASK":
            values, halves = blk.ask, False
        elif what_to_show == "MIDPOINT":
            values, halves = blk.bid + blk.ask, True
        else:
            raise ValueError(f"unsupported whatToShow {what_to_show!r}: expected {WHAT_TO_SHOW}")
        ohlc = [
            self._prices(v, halves)
            for v in (
                values[starts],
                np.maximum.reduceat(values, starts),
                np.minimum.reduceat(values, starts),
                values[ends],
            )
        ]
        if what_to_show == "TRADES":
            volume = np.add.reduceat(blk.size, starts)
            notional = np.add.reduceat(self._prices(blk.last) * blk.size, starts)
            wap = np.round(notional / volume, 4)
            count = np.diff(blk.first)
        else:  # IB sends no volume, WAP or count for quote bars
            volume = wap = np.full(_BARS, -1.0)
            count = np.full(_BARS, -1, dtype=np.int64)
        found = (*ohlc, volume, wap, count)
        blk.bars[what_to_show] = found
        return found

    # -- MarketModel -----------------------------------------------------------------------

    def _generate(self, start: int) -> _Slot:
        block, offset = divmod(start, BLOCK_SECONDS)
        blk = self._block(block)
        i = offset // BAR_SECONDS
        base = block * BLOCK_SECONDS * 1000
        price = self._price
        ticks = tuple(
            SimTick(
                self.symbol,
                (base + int(blk.ms[k])) / 1000,
                price(int(blk.bid[k])),
                float(blk.bid_size[k]),
                price(int(blk.ask[k])),
                float(blk.ask_size[k]),
                price(int(blk.last[k])),
                float(blk.size[k]),
            )
            for k in range(int(blk.first[i]), int(blk.first[i + 1]))
        )
        return self._sim_bar(blk, i, start, "TRADES"), ticks

    def _sim_bar(self, blk: _Block, i: int, start: int, what_to_show: str) -> SimBar:
        o, h, lo, c, v, wap, n = self._bar_arrays(blk, what_to_show)
        return SimBar(
            self.symbol, start, float(o[i]), float(h[i]), float(lo[i]), float(c[i]),
            float(v[i]), float(wap[i]), int(n[i]),
        )  # fmt: skip

    def bar(self, start: int, what_to_show: str = "TRADES") -> SimBar | None:
        """The 5-second bar starting at ``start`` (every bar has trades, so never None)."""
        if start % BAR_SECONDS:
            raise ValueError(f"bar start {start} is not a multiple of {BAR_SECONDS} seconds")
        block, offset = divmod(start, BLOCK_SECONDS)
        return self._sim_bar(self._block(block), offset // BAR_SECONDS, start, what_to_show)

    def partial_bar(self, start: int, before: float, what_to_show: str = "TRADES") -> SimBar | None:
        """The bar starting at ``start`` as it stands at time ``before`` (trades before it)."""
        if before >= start + BAR_SECONDS:
            return self.bar(start, what_to_show)
        block, offset = divmod(start, BLOCK_SECONDS)
        blk = self._block(block)
        i = offset // BAR_SECONDS
        lo = int(blk.first[i])
        limit = (before - block * BLOCK_SECONDS) * 1000  # trades strictly before `before`
        trades = blk.ms[lo : int(blk.first[i + 1])]
        hi = lo + int(np.searchsorted(trades, np.float64(limit), side="left"))
        if hi == lo:
            return None
        if what_to_show == "TRADES":
            values, halves = blk.last[lo:hi], False
        elif what_to_show in ("BID", "ASK"):
            values, halves = (blk.bid if what_to_show == "BID" else blk.ask)[lo:hi], False
        else:
            values, halves = blk.bid[lo:hi] + blk.ask[lo:hi], True
        o, h, low, c = (
            float(x) for x in self._prices(
                np.array([values[0], values.max(), values.min(), values[-1]]), halves
            )
        )  # fmt: skip
        if what_to_show != "TRADES":
            return SimBar(self.symbol, start, o, h, low, c, -1.0, -1.0, -1)
        size = blk.size[lo:hi]
        volume = float(size.sum())
        wap = round(float((self._prices(values) * size).sum()) / volume, 4)
        return SimBar(self.symbol, start, o, h, low, c, volume, wap, hi - lo)

    def window_bars(
        self,
        start: int,
        end: int,
        seconds: int,
        what_to_show: str = "TRADES",
        sessions: Sequence[tuple[float, float]] | None = None,
    ) -> list[SimBar]:
        """See ``MarketModel.window_bars``; computed block by block with numpy."""
        if seconds <= 0 or seconds % BAR_SECONDS:
            raise ValueError(f"window of {seconds}s: expected a positive multiple of 5 seconds")
        a, b = _ceil(start, seconds), _floor(end, seconds)
        if b <= a or (sessions is not None and not sessions):
            return []
        if sessions is not None:
            los = np.array([lo for lo, _ in sessions], dtype=float)
            his = np.array([hi for _, hi in sessions], dtype=float)
        parts: list[tuple[Array, ...]] = []
        for block in range(a // BLOCK_SECONDS, (b - 1) // BLOCK_SECONDS + 1):
            origin = block * BLOCK_SECONDS
            i0 = (max(a, origin) - origin) // BAR_SECONDS
            i1 = (min(b, origin + BLOCK_SECONDS) - origin) // BAR_SECONDS
            index = np.arange(i0, i1)
            times = origin + index * BAR_SECONDS
            if sessions is not None:
                j = np.searchsorted(los, times, side="right") - 1
                keep = (j >= 0) & (times < his[np.maximum(j, 0)])
                index, times = index[keep], times[keep]
            if not index.size:
                continue
            o, h, lo, c, v, wap, n = (
                x[index] for x in self._bar_arrays(self._block(block), what_to_show)
            )
            parts.append(_group((times - a) // seconds, o, h, lo, c, v, wap * v, n))
        if not parts:
            return []
        win, o, h, lo, c, v, wv, n = _group(*(np.concatenate(x) for x in zip(*parts, strict=True)))
        quotes = what_to_show != "TRADES"
        out = []
        for k in range(win.size):
            volume = float(v[k])
            if quotes:
                volume, wap_k, count = -1.0, -1.0, -1
            else:
                wap_k = round(float(wv[k]) / volume, 4) if volume > 0 else float(c[k])
                count = int(n[k])
            t = a + int(win[k]) * seconds
            prices = float(o[k]), float(h[k]), float(lo[k]), float(c[k])
            out.append(SimBar(self.symbol, t, *prices, volume, wap_k, count, seconds))
        return out


def _group(win: Array, o: Array, h: Array, lo: Array, c: Array, *sums: Array) -> tuple[Array, ...]:
    """Aggregate runs of equal (sorted) ``win``: first open, max high, min low, last close,
    and the sum of each of ``sums``."""
    starts = np.flatnonzero(np.r_[True, win[1:] != win[:-1]])
    ends = np.r_[starts[1:], win.size] - 1
    return (
        win[starts],
        o[starts],
        np.maximum.reduceat(h, starts),
        np.minimum.reduceat(lo, starts),
        c[ends],
        *(np.add.reduceat(s, starts) for s in sums),
    )
