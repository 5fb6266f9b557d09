"""Test helpers for the stream operators: virtual time, observable upstreams, a pandas oracle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pandas as pd

from mdp_core.models import RESOLUTIONS, Bar

T = TypeVar("T")
T0 = datetime(2024, 1, 2, tzinfo=UTC)  # a UTC midnight: aligned to every resolution


class FakeClock:
    """Virtual time: ``clock()`` reads it; ``await clock.sleep(s)`` advances it by ``s`` (or by
    at most ``max_step``) and yields to the loop once, so nothing really waits."""

    def __init__(self, now: float = 1000.0, max_step: float | None = None) -> None:
        self.now = now
        self.max_step = max_step
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        step = seconds if self.max_step is None else min(seconds, self.max_step)
        self.now += max(0.0, step)
        await asyncio.sleep(0)


class Upstream:
    """An async iterator (not a generator) that records ``aclose()``.

    Yields ``items``; if ``times`` is given, moves ``clock.now`` forward to each item's time
    before yielding it (never back: a consumer that waited may already be later). Then
    raises ``error`` if given, else blocks forever if ``block`` (setting ``blocked``), else
    ends.
    """

    def __init__(
        self,
        items: Iterable[Any],
        *,
        clock: FakeClock | None = None,
        times: Sequence[float] | None = None,
        error: BaseException | None = None,
        block: bool = False,
    ) -> None:
        self._items = list(items)
        self._clock = clock
        self._times = times
        self._error = error
        self._block = block
        self._i = 0
        self.closed = False
        self.blocked = asyncio.Event()
        self.taken = 0

    def __aiter__(self) -> Upstream:
        return self

    async def __anext__(self) -> Any:
        if self.closed:
            raise StopAsyncIteration
        if self._i < len(self._items):
            if self._clock is not None and self._times is not None:
                self._clock.now = max(self._clock.now, self._times[self._i])
            item = self._items[self._i]
            self._i += 1
            self.taken += 1
            return item
        if self._error is not None:
            raise self._error
        if self._block:
            self.blocked.set()
            await asyncio.Event().wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


async def collect(stream: AsyncIterator[T], timeout: float = 10.0) -> list[T]:
    async with asyncio.timeout(timeout):
        return [item async for item in stream]


def run(stream_factory: Any, timeout: float = 10.0) -> list[Any]:
    """Build a stream inside a fresh event loop and collect it (for hypothesis tests)."""

    async def main() -> list[Any]:
        return await collect(stream_factory(), timeout)

    return asyncio.run(main())


async def from_list(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item


def bar_rows(bars: Iterable[Bar]) -> list[tuple[Any, ...]]:
    """Bars as comparable rows, sorted by (symbol, ts)."""
    return sorted((b.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume) for b in bars)


def pandas_ohlc(rows: Sequence[tuple[str, datetime, float, float]], window: str) -> list[tuple]:
    """The oracle: ``(symbol, ts, price, volume)`` rows (already in event-time order; ties in
    arrival order) resampled per symbol with pandas, empty windows removed."""
    df = pd.DataFrame(list(rows), columns=["symbol", "ts", "price", "volume"])
    agg = (
        df.set_index("ts")
        .groupby("symbol")
        .resample(
            pd.Timedelta(seconds=RESOLUTIONS[window]),
            label="left",
            closed="left",
            origin="epoch",
        )
        .agg(
            open=("price", "first"),
            high=("price", "max"),
            low=("price", "min"),
            close=("price", "last"),
            volume=("volume", "sum"),
        )
        .dropna(subset=["open"])
    )
    return sorted(
        (sym, ts.to_pydatetime(), r.open, r.high, r.low, r.close, r.volume)
        for (sym, ts), r in zip(agg.index, agg.itertuples(index=False), strict=True)
    )


def pandas_bars(bars: Sequence[Bar], window: str) -> list[tuple]:
    """The oracle for resample_bars: first/max/min/last/sum per symbol and window."""
    df = pd.DataFrame(
        [(b.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume) for b in bars],
        columns=["symbol", "ts", "open", "high", "low", "close", "volume"],
    )
    agg = (
        df.set_index("ts")
        .groupby("symbol")
        .resample(
            pd.Timedelta(seconds=RESOLUTIONS[window]),
            label="left",
            closed="left",
            origin="epoch",
        )
        .agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
        .dropna(subset=["open"])
    )
    return sorted(
        (sym, ts.to_pydatetime(), r.open, r.high, r.low, r.close, r.volume)
        for (sym, ts), r in zip(agg.index, agg.itertuples(index=False), strict=True)
    )
