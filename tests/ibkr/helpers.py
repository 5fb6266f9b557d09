"""Helpers for the IBKR source tests: a source wired to a simulated gateway, waiting on
gateway pumps (never on sleeps), collecting records, and comparing with what was sent."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from mdp_core.gateway import SimTick, SimulatedGateway
from mdp_core.models import Bar, Quote, Record
from mdp_core.providers.ibkr import IBKROptions, IBKRStreamSource
from mdp_core.providers.ibkr.compat import load_ib_library
from mdp_core.settings import IBKRSettings

TIMEOUT = 30  # seconds; every test is bounded with asyncio.timeout

_client_ids = itertools.count(11)


def next_client_id() -> int:
    return next(_client_ids)


def settings_for(gw: SimulatedGateway, client_id: int | None = None, **kw: Any) -> IBKRSettings:
    """Settings pointing at ``gw`` with fast reconnects (the backoff policy is tested apart)."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": gw.port,
        "client_id": client_id if client_id is not None else next_client_id(),
        "connect_timeout": 5.0,
        "reconnect_initial_backoff": 0.05,
        "reconnect_max_backoff": 0.2,
    }
    values.update(kw)
    return IBKRSettings(**values)


def new_ib() -> Any:
    """A new ``IB`` of the client library the source uses (ib_async, else ib_insync)."""
    return load_ib_library().IB()


def always_open(now: Any) -> bool:
    """The simulated gateway trades around the clock."""
    return True


def make_source(gw: SimulatedGateway, symbols: list[str], mode: str, **kw: Any) -> IBKRStreamSource:
    """A source on ``gw``; ``kw``: ``IBKRStreamSource`` arguments and ``IBKROptions`` fields
    (the market is always open unless ``market_open`` says otherwise)."""
    settings = kw.pop("ibkr_settings", None) or settings_for(gw)
    source_args = {k: kw.pop(k) for k in ("bar_resolution", "provider") if k in kw}
    options = IBKROptions(**{"market_open": always_open, **kw})
    return IBKRStreamSource(
        symbols, mode=mode, ibkr_settings=settings, options=options, **source_args
    )


class Collector:
    """Consumes ``source.stream()`` in a task; ``wait_for(predicate)`` waits on gateway pumps."""

    def __init__(self, source: IBKRStreamSource) -> None:
        self.source = source
        self.records: list[Record] = []
        self.error: BaseException | None = None
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for record in self.source.stream():
                self.records.append(record)
        except Exception as exc:
            self.error = exc

    def of(self, symbol: str) -> list[Any]:
        return [r for r in self.records if r.symbol == symbol]

    def count(self, symbol: str) -> int:
        return sum(1 for r in self.records if r.symbol == symbol)

    async def wait_for(self, gw: SimulatedGateway, predicate: Callable[[], bool]) -> None:
        """Wait (bounded by the caller's timeout) until ``predicate()`` holds."""
        while not predicate():
            if self._task.done():
                raise AssertionError(f"the stream ended early: {self.error!r}")
            await gw.wait_pumps(1)

    async def finish(self) -> list[Record]:
        """Stop the source and wait for the stream to end; the records received."""
        await self.source.stop()
        await self._task
        if self.error is not None:
            raise self.error
        return self.records


async def pumps_until(gw: SimulatedGateway, predicate: Callable[[], bool]) -> None:
    while not predicate():
        await gw.wait_pumps(1)


def quote_values(q: Quote) -> tuple[Any, ...]:
    return (q.bid, q.ask, q.last, q.bid_size, q.ask_size, q.last_size)


def tick_values(t: SimTick) -> tuple[Any, ...]:
    return (t.bid, t.ask, t.last, t.bid_size, t.ask_size, t.last_size)


def sim_bars(gw: SimulatedGateway, symbol: str, bars: list[Bar]) -> list[Bar]:
    """The gateway's bars over ``[first bar, last bar]`` of ``bars``, as ``Bar`` records."""
    first, last = bars[0].ts, bars[-1].ts
    return [
        b.to_bar(source="ibkr")
        for b in gw.bars_between(symbol, first.timestamp(), last.timestamp() + 5)
    ]


__all__ = [
    "TIMEOUT",
    "Collector",
    "always_open",
    "make_source",
    "new_ib",
    "next_client_id",
    "pumps_until",
    "quote_values",
    "settings_for",
    "sim_bars",
    "tick_values",
]
