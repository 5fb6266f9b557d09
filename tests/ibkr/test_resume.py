"""A bars stream that is stopped and started again (a restart, a relaunched Dagster run)
backfills the bars it missed while no stream ran: the table has every bar once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mdp_core.dlq import DeadLetterQueue
from mdp_core.gateway import SimulatedGateway, aggregate_bars
from mdp_core.pipeline import Pipeline
from mdp_core.store.database import Database
from mdp_core.streams import StreamSpec
from tests.ibkr.helpers import always_open, pumps_until, settings_for

SYMBOLS = ["AAPL", "MSFT"]


def spec(gw: SimulatedGateway) -> StreamSpec:
    return StreamSpec(
        name="resume",
        provider="ibkr",
        mode="bars",
        symbols=SYMBOLS,
        provider_options={"ibkr_settings": settings_for(gw), "market_open": always_open},
        coordinator={"batch_size": 50, "flush_interval": 0.05},  # type: ignore[arg-type]
    )


async def run_until(gw: SimulatedGateway, pipeline: Pipeline, committed: int) -> None:
    """Run ``pipeline`` until it committed ``committed`` bars, then stop and drain it."""
    task = asyncio.create_task(pipeline.run())
    await pumps_until(
        gw, lambda: task.done() or pipeline.stats().coordinator.committed >= committed
    )
    pipeline.request_stop()
    stats = await task
    assert stats.balanced


async def test_a_restarted_stream_backfills_what_it_missed(
    gw: SimulatedGateway, fresh_dsn: str, tmp_path: Path
) -> None:
    async with asyncio.timeout(90), Database.connect(fresh_dsn) as db:
        dlq = DeadLetterQueue(tmp_path / "dlq")
        await run_until(gw, Pipeline(spec(gw), db, dlq=dlq), committed=6)
        stopped_at = max((await db.last_bar_times(SYMBOLS, "5s")).values())
        # the market moves on while no stream runs: a simulated minute of bars
        await pumps_until(gw, lambda: gw.now() > stopped_at.timestamp() + 60)
        await run_until(gw, Pipeline(spec(gw), db, dlq=dlq), committed=6)
        rows = await db.pool.fetch(
            "SELECT symbol, ts, open, high, low, close, volume FROM mdp.bars "
            "WHERE resolution = '5s' ORDER BY symbol, ts"
        )
    assert dlq.count() == 0
    for symbol in SYMBOLS:
        stored = [tuple(r)[1:] for r in rows if r["symbol"] == symbol]
        assert stored[-1][0] > stopped_at  # the second run got past the gap
        expected = gw.bars_between(symbol, stored[0][0], stored[-1][0].timestamp() + 5)
        # every 5-second bar of both runs and of the gap between them, exactly once
        assert stored == [(b.start, b.open, b.high, b.low, b.close, b.volume) for b in expected]


async def test_a_coarser_bar_cut_by_a_stop_is_stored_partial_then_replaced_whole(
    gw: SimulatedGateway, fresh_dsn: str, tmp_path: Path
) -> None:
    """1-minute bars from IB's 5-second bars: the minute in progress at a stop is stored
    flagged ``partial``; the next run backfills that minute from history and the complete
    bar replaces it. Every complete minute equals the gateway's aggregate."""
    minute = spec(gw).model_copy(update={"resolution": "1m", "name": "resume-1m"})
    async with asyncio.timeout(120), Database.connect(fresh_dsn) as db:
        dlq = DeadLetterQueue(tmp_path / "dlq")
        await run_until(gw, Pipeline(minute, db, dlq=dlq), committed=2)
        cut = await db.pool.fetch(
            "SELECT symbol, ts FROM mdp.bars WHERE resolution = '1m' AND partial"
        )
        assert {r["symbol"] for r in cut} == set(SYMBOLS)  # the minute cut by the stop
        await run_until(gw, Pipeline(minute, db, dlq=dlq), committed=4)
        rows = await db.pool.fetch(
            "SELECT symbol, ts, open, high, low, close, volume, partial FROM mdp.bars "
            "WHERE resolution = '1m' ORDER BY symbol, ts"
        )
    stored = {(r["symbol"], r["ts"]): r for r in rows}
    for r in cut:  # replaced by the complete bar of the gateway's model
        row = stored[(r["symbol"], r["ts"])]
        start = int(r["ts"].timestamp())
        whole = aggregate_bars(gw.bars_between(r["symbol"], start, start + 60), start, 60)
        assert not row["partial"]
        assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == (
            whole.open, whole.high, whole.low, whole.close, whole.volume,
        )  # fmt: skip
    assert dlq.count() == 0
