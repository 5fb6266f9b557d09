"""Test helpers for the coordinator: records, a fake clock, in-memory fault-injecting sinks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from mdp_core.models import Bar, Quote

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)


def quotes(n: int, *, symbol: str = "AAPL", start: int = 0, source: str = "test") -> list[Quote]:
    """``n`` valid quotes with distinct keys (one per millisecond)."""
    return [
        Quote(
            symbol,
            T0 + timedelta(milliseconds=start + i),
            bid=100.0 + (i % 100) / 100,
            ask=100.5 + (i % 100) / 100,
            bid_size=float(i % 7),
            ask_size=3.0,
            last=100.25,
            last_size=1.0,
            source=source,
        )
        for i in range(n)
    ]


def bars(n: int, *, symbol: str = "MSFT", resolution: str = "5s") -> list[Bar]:
    return [
        Bar(
            symbol,
            T0 + timedelta(seconds=5 * i),
            open=10.0,
            high=11.0 + i % 3,
            low=9.5,
            close=10.5,
            volume=float(100 + i),
            resolution=resolution,
            vwap=10.2,
            trade_count=i,
            source="test",
        )
        for i in range(n)
    ]


class FakeClock:
    """Monotonic clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += max(0.0, delay)
        await asyncio.sleep(0)


Fault = Callable[[int, Sequence[object]], BaseException | None]


class MemorySink:
    """An atomic in-memory "table" keyed like the real one.

    ``fault(call_no, batch)`` may return an exception to raise instead of writing (the batch
    is then not applied: all or nothing). Items whose key is in ``poison`` make the whole
    write fail with a CheckViolationError, like a CHECK constraint would. ``gate``, when
    set, makes every write wait for it (a stalled sink)."""

    def __init__(
        self,
        kind: str = "quote",
        *,
        fault: Fault | None = None,
        poison: set[object] | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.kind = kind
        self.fault = fault
        self.poison = poison or set()
        self.gate = gate
        self.rows: dict[object, object] = {}
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.call_times: list[float] = []
        self.clock: Callable[[], float] | None = None
        self.written = asyncio.Event()
        self.entered = 0  # writes that started (for stalled-sink tests)

    async def write(self, batch: Sequence[Quote | Bar]) -> int:
        self.calls += 1
        self.entered += 1
        if self.clock is not None:
            self.call_times.append(self.clock())
        if self.gate is not None:
            await self.gate.wait()
        if self.fault is not None:
            exc = self.fault(self.calls, batch)
            if exc is not None:
                raise exc
        bad = [item for item in batch if item.key in self.poison]
        if bad:
            raise asyncpg.CheckViolationError(
                f'new row for relation "quotes" violates check constraint ({bad[0].key})'
            )
        new = 0
        for item in batch:
            if item.key not in self.rows:
                new += 1
            self.rows[item.key] = item
        self.batch_sizes.append(len(batch))
        self.written.set()
        return new
