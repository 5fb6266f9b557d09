"""Streams of instruments beyond US stocks (FX, futures, continuous futures, indices) land
rows from the simulated gateway, stored under their instrument ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mdp_core.dlq import DeadLetterQueue
from mdp_core.gateway import SimulatedGateway
from mdp_core.pipeline import Pipeline
from mdp_core.store.database import Database
from mdp_core.streams import StreamSpec
from tests.ibkr.helpers import always_open, pumps_until, settings_for

FX, ES, CONT, SPX = (
    "EUR:CASH:IDEALPRO:USD",
    "ES:FUT:CME:USD:202503",
    "ES:CONTFUT:CME",
    "SPX:IND:CBOE",
)


@pytest.fixture
async def xgw() -> AsyncIterator[SimulatedGateway]:
    async with SimulatedGateway(
        symbols=[FX, ES, CONT, SPX], port=0, seed=6, time_compression=60.0, tick_interval=0.02
    ) as gw:
        yield gw


def _spec(gw: SimulatedGateway, name: str, mode: str, symbols: list[str]) -> StreamSpec:
    return StreamSpec(
        name=name,
        provider="ibkr",
        mode=mode,  # type: ignore[arg-type]
        symbols=symbols,
        provider_options={"ibkr_settings": settings_for(gw), "market_open": always_open},
        coordinator={"batch_size": 20, "flush_interval": 0.05},  # type: ignore[arg-type]
    )


async def _run(gw: SimulatedGateway, pipeline: Pipeline, enough: int) -> None:
    task = asyncio.create_task(pipeline.run())
    await pumps_until(gw, lambda: task.done() or pipeline.stats().coordinator.committed >= enough)
    pipeline.request_stop()
    stats = await task
    assert stats.error is None and stats.balanced


async def test_fx_and_futures_bar_streams_land_rows(
    xgw: SimulatedGateway, fresh_dsn: str, tmp_path: Path
) -> None:
    symbols = ["eur:cash", ES, CONT, SPX]  # any spelling: stored as the canonical id
    async with asyncio.timeout(90), Database.connect(fresh_dsn) as db:
        pipeline = Pipeline(
            _spec(xgw, "x_bars", "bars", symbols), db, dlq=DeadLetterQueue(tmp_path)
        )
        await _run(xgw, pipeline, enough=16)
        rows = await db.pool.fetch(
            "SELECT symbol, ts, open, high, low, close, volume, vwap FROM mdp.bars "
            "WHERE resolution = '5s' ORDER BY symbol, ts"
        )
    by_symbol: dict[str, list[tuple[object, ...]]] = {}
    for r in rows:
        by_symbol.setdefault(r["symbol"], []).append(tuple(r)[1:])
    assert set(by_symbol) == {FX, ES, CONT, SPX}
    for symbol, stored in by_symbol.items():
        what = "MIDPOINT" if symbol == FX else "TRADES"  # IB has no FX trades
        first, last = stored[0][0], stored[-1][0]
        expected = xgw.model(symbol).bars_between(first, last.timestamp() + 5, what)
        assert stored == [
            (
                b.start,
                b.open,
                b.high,
                b.low,
                b.close,
                max(b.volume, 0.0),
                b.wap if b.wap > 0 else None,
            )
            for b in expected
        ]
    assert all(volume == 0 and vwap is None for *_, volume, vwap in by_symbol[FX])
    assert all((close * 4).is_integer() for *_, close, _v, _w in by_symbol[ES])  # quarter points
    bar_requests = xgw.requests_for(50)
    assert {r.fields[16] for r in bar_requests} == {"MIDPOINT", "TRADES"}  # whatToShow


async def test_fx_quotes_have_bid_and_ask_and_no_trades(
    xgw: SimulatedGateway, fresh_dsn: str, tmp_path: Path
) -> None:
    async with asyncio.timeout(90), Database.connect(fresh_dsn) as db:
        pipeline = Pipeline(
            _spec(xgw, "x_quotes", "quotes", [FX, ES]), db, dlq=DeadLetterQueue(tmp_path)
        )
        await _run(xgw, pipeline, enough=40)
        rows = await db.pool.fetch("SELECT symbol, bid, ask, last FROM mdp.quotes")
    fx = [r for r in rows if r["symbol"] == FX]
    es = [r for r in rows if r["symbol"] == ES]
    assert fx and es
    assert all(
        r["last"] is None and 1.0 < r["bid"] < r["ask"] < 1.2 for r in fx if r["bid"] and r["ask"]
    )
    assert any(r["last"] is not None for r in es)
