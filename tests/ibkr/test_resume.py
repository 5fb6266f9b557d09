"""A bars stream that is stopped and started again (a restart, a relaunched Dagster run)
backfills the bars it missed while no stream ran: the table has every bar once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mdp_core.dlq import DeadLetterQueue
from mdp_core.gateway import SimulatedGateway
from mdp_core.pipeline import Pipeline, StreamSpec
from mdp_core.store.database import Database
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
        gw, lambda: task.done() or pipeline.snapshot().coordinator.committed >= committed
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
