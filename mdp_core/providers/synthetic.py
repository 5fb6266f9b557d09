"""SyntheticSource: a seeded random walk of quotes or bars, for demos, tests and benchmarks.

Prices. Each symbol walks on a tick grid (``tick_size``) with its own generator seeded by
``(seed, symbol)``: the same seed and symbol give the same prices whatever other symbols
are streamed. Quotes always have ``bid < ask`` (a 1-3 tick spread) and sizes; bars satisfy
``low <= open, close <= high``, open at the previous close and carry a volume.

Timing. ``rate`` is items per second per symbol (one round = one item per symbol);
``rate=None`` or ``0`` means as fast as possible (yielding to the event loop regularly).

- ``start=None``, a live clock: event time is the real UTC time (run ``time_compression``
  times faster from the moment the stream starts). A quote carries the clock's time when
  made. Bars are never in the future: the last closed window is emitted at once, then each
  window as soon as the clock passes its end (``rate`` then only caps the pace).
- ``start`` given, a simulated clock: timestamps are ``start`` (aligned down to the
  resolution for bars) plus one step per round; a step is one resolution for bars and
  ``1/rate`` seconds for quotes (1 ms when unthrottled). Same arguments, same records.

``max_items`` (over all symbols) ends the stream after that many records.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mdp_core.models import Bar, Quote, Record, resolution_seconds
from mdp_core.providers.base import ProviderError, ProviderSource

__all__ = ["SyntheticSource"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_YIELD_EVERY = 512  # unthrottled: hand the loop over after this many records


class _Walk:
    """One symbol's random walk, in integer ticks (exact, no float drift)."""

    __slots__ = ("price", "random", "symbol")

    def __init__(self, symbol: str, seed: int, tick: float) -> None:
        self.symbol = symbol
        self.random = random.Random(f"mdp-synthetic:{seed}:{symbol}").random
        self.price = max(1, round((20.0 + 480.0 * self.random()) / tick))

    def move(self) -> int:
        """Advance by a few ticks (about 3 basis points a step) and return the new price."""
        width = 2 * max(1, self.price // 3000) + 1
        price = self.price + int(self.random() * width) - width // 2
        self.price = price if price >= 1 else 2 - price  # reflect at one tick
        return self.price


class SyntheticSource(ProviderSource):
    """Deterministic synthetic quotes or bars; see the module docstring for the timing."""

    name = "synthetic"

    def __init__(
        self,
        symbols: str | Iterable[str],
        mode: str = "quotes",
        bar_resolution: str = "5s",
        *,
        seed: int = 0,
        rate: float | None = 10.0,
        start: datetime | str | None = None,
        time_compression: float = 1.0,
        max_items: int | None = None,
        tick_size: float = 0.01,
        source: str = "synthetic",
    ) -> None:
        super().__init__(symbols, mode, bar_resolution)
        if rate is not None and not (0 <= rate < math.inf):
            raise ValueError(f"rate {rate!r} is invalid: expected items per second >= 0, or None")
        if not (0 < time_compression < math.inf):
            raise ValueError(f"time_compression {time_compression!r} is invalid: expected > 0")
        if max_items is not None and (not isinstance(max_items, int) or max_items < 0):
            raise ValueError(f"max_items {max_items!r} is invalid: expected an int >= 0 or None")
        if not (0 < tick_size < math.inf):
            raise ValueError(f"tick_size {tick_size!r} is invalid: expected a price > 0")
        if isinstance(start, str):  # from a config file or the command line
            try:
                start = datetime.fromisoformat(start)
            except ValueError:
                raise ValueError(
                    f"start {start!r} is invalid: expected an ISO 8601 time with a UTC offset, "
                    "like 2024-01-02T14:30:00Z"
                ) from None
        if start is not None and not isinstance(start, datetime):
            raise ValueError(f"start {start!r} is invalid: expected a timezone-aware datetime")
        if start is not None and (start.tzinfo is None or start.utcoffset() is None):
            raise ValueError(f"start {start.isoformat()} is naive: expected a timezone-aware time")
        self.seed = seed
        self.rate = rate or None
        self.start_time = start.astimezone(UTC) if start is not None else None
        self.time_compression = float(time_compression)
        self.max_items = max_items
        self.tick_size = float(tick_size)
        self.source = source
        self.emitted = 0
        self._decimals = max(0, -int(Decimal(str(tick_size)).as_tuple().exponent))
        self._resolution = self.resolution or ""
        self._started = False
        self._stop_requested = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        self._started = True
        self._stop_requested = False
        self._stopped.clear()

    async def stop(self) -> None:
        self._stop_requested = True
        self._stopped.set()

    async def stream(self) -> AsyncIterator[Record]:
        """Records until ``stop()`` or ``max_items``; each call replays from the beginning."""
        if not self._started:
            raise ProviderError("SyntheticSource.stream() called before start()")
        walks = [_Walk(symbol, self.seed, self.tick_size) for symbol in self.symbols]
        make = self._quote if self.mode == "quotes" else self._bar
        clock = _Clock(self)
        limit = self.max_items
        count = 0
        while limit is None or count < limit:
            ts = await clock.next_round()
            if ts is None:
                return
            for walk in walks:
                if limit is not None and count >= limit:
                    return
                yield make(walk, ts)
                count += 1
                self.emitted += 1
                if count % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)

    # -- records ---------------------------------------------------------------------------

    def _quote(self, walk: _Walk, ts: datetime) -> Quote:
        tick, dec, rnd = self.tick_size, self._decimals, walk.random
        bid = walk.move()
        ask = bid + 1 + int(rnd() * 3)
        return Quote(
            symbol=walk.symbol,
            ts=ts,
            bid=round(bid * tick, dec),
            ask=round(ask * tick, dec),
            bid_size=float(100 * (1 + int(rnd() * 20))),
            ask_size=float(100 * (1 + int(rnd() * 20))),
            source=self.source,
        )

    def _bar(self, walk: _Walk, ts: datetime) -> Bar:
        tick, dec, rnd = self.tick_size, self._decimals, walk.random
        open_ = walk.price
        close = walk.move()
        reach = 1 + open_ // 2000
        high = max(open_, close) + int(rnd() * reach)
        low = max(1, min(open_, close) - int(rnd() * reach))
        return Bar(
            symbol=walk.symbol,
            ts=ts,
            open=round(open_ * tick, dec),
            high=round(high * tick, dec),
            low=round(low * tick, dec),
            close=round(close * tick, dec),
            volume=float(100 * (1 + int(rnd() * 50))),
            resolution=self._resolution,
            source=self.source,
        )


class _Clock:
    """Event time and wall-clock pacing of the rounds of one ``stream()`` call."""

    def __init__(self, src: SyntheticSource) -> None:
        self.src = src
        self.loop = asyncio.get_running_loop()
        self.wall0 = self.loop.time()
        self.round = 0
        self.interval = 1.0 / src.rate if src.rate else 0.0
        self.live = src.start_time is None
        self.last: datetime | None = None
        if src.mode == "bars":
            assert src.resolution is not None
            self.step = timedelta(seconds=resolution_seconds(src.resolution))
        else:
            self.step = timedelta(microseconds=max(1, round(1e6 * (self.interval or 0.001))))
        start = src.start_time
        self.time0: datetime = datetime.now(UTC) if start is None else start
        self.first = self.time0
        if src.mode == "bars":
            self.first = _align(self.time0, self.step) - (self.step if self.live else timedelta())

    def now(self) -> datetime:
        if self.src.time_compression == 1.0:
            return datetime.now(UTC)
        elapsed = (self.loop.time() - self.wall0) * self.src.time_compression
        return self.time0 + timedelta(seconds=elapsed)

    async def next_round(self) -> datetime | None:
        """Wait for the next round's turn; its event time, or ``None`` once stopped."""
        src = self.src
        if src._stop_requested:
            return None
        k = self.round
        self.round += 1
        due = self.wall0 + k * self.interval
        if self.live and src.mode == "bars":
            window = self.first + k * self.step
            ends_in = (window + self.step - self.time0).total_seconds() / src.time_compression
            due = max(due, self.wall0 + ends_in)
            if not await self._sleep_until(due):
                return None
            return window
        if not await self._sleep_until(due):
            return None
        if not self.live:
            return self.first + k * self.step
        ts = self.now()
        if self.last is not None and ts <= self.last:
            ts = self.last + timedelta(microseconds=1)  # keys (symbol, ts) never repeat
        self.last = ts
        return ts

    async def _sleep_until(self, due: float) -> bool:
        """Sleep until loop time ``due`` unless stopped first; whether to go on."""
        delay = due - self.loop.time()
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await self.src._stopped.wait()
            except TimeoutError:
                pass
        return not self.src._stop_requested


def _align(ts: datetime, step: timedelta) -> datetime:
    """``ts`` rounded down to a multiple of ``step`` since the epoch."""
    return ts - (ts - _EPOCH) % step
