"""Session bars from IB's 5-second bars, restarted mid-session: the session's bar cut by the
first stop is stored ``partial``; the next run backfills from the session's open, and the
complete bar it writes at the close replaces the partial one and equals the gateway's own
5-second bars of the whole session.

Both gateways (same seed, so the same market) replay the latest XNYS session that has
closed (by the wall clock: the stored bars must be recent for the resume to find them):
the first from 20 minutes after the open, a simulated minute per real second; the second
from 40 minutes after the open (within the hour of 5-second bars IB serves in one
request), ten simulated minutes per real second, through the close.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mdp_core.calendars import sessions_of
from mdp_core.dlq import DeadLetterQueue
from mdp_core.gateway import SimulatedGateway, aggregate_bars
from mdp_core.models import Bar
from mdp_core.pipeline import Pipeline
from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink
from mdp_core.streams import StreamSpec
from tests.ibkr.helpers import always_open, pumps_until, settings_for

SYMBOLS = ["AAPL", "MSFT"]


def recent_session() -> tuple[datetime, datetime, datetime]:
    """The open and close of the latest XNYS session closed by now, and the open of the one
    before it."""
    sessions = sessions_of("XNYS")
    now = datetime.now(UTC).timestamp()
    i = max(k for k, t in enumerate(sessions.closes) if t <= now)
    at = [sessions.opens[i], sessions.closes[i], sessions.opens[i - 1]]
    opens, close, previous = (datetime.fromtimestamp(t, UTC) for t in at)
    return opens, close, previous


OPEN, CLOSE, PREVIOUS_OPEN = recent_session()


def gateway(start: datetime, time_compression: float) -> SimulatedGateway:
    return SimulatedGateway(
        symbols=SYMBOLS, port=0, seed=5, time_compression=time_compression,
        tick_interval=0.05, start=start,
    )  # fmt: skip


def spec(gw: SimulatedGateway) -> StreamSpec:
    options = {
        "ibkr_settings": settings_for(gw),
        "market_open": always_open,
    }
    return StreamSpec(
        name="sessions",
        provider="ibkr",
        mode="bars",
        resolution="1d",
        sessions="XNYS",
        symbols=SYMBOLS,
        provider_options=options,
        coordinator={"batch_size": 50, "flush_interval": 0.05},  # type: ignore[arg-type]
    )


async def session_rows(db: Database) -> dict[str, dict[str, object]]:
    rows = await db.pool.fetch(
        "SELECT symbol, open, high, low, close, volume, partial FROM mdp.bars "
        "WHERE resolution = '1d' AND ts = $1",
        OPEN,
    )
    return {r["symbol"]: dict(r) for r in rows}


def ohlcv(row: dict[str, object]) -> tuple[object, ...]:
    return (row["open"], row["high"], row["low"], row["close"], row["volume"])


async def test_a_session_restarted_mid_way_is_rebuilt_whole_from_its_open(
    fresh_dsn: str, tmp_path: Path
) -> None:
    async with asyncio.timeout(240), Database.connect(fresh_dsn) as db:
        # the previous session's bars are stored complete (an earlier run wrote them)
        await BarsSink(db).write(
            [Bar(s, PREVIOUS_OPEN, 1.0, 1.0, 1.0, 1.0, 1.0, "1d", source="ibkr") for s in SYMBOLS]
        )
        dlq = DeadLetterQueue(tmp_path / "dlq")
        async with gateway(OPEN + timedelta(minutes=20), 60.0) as gw:
            first_run = Pipeline(spec(gw), db, dlq=dlq)
            task = asyncio.create_task(first_run.run())
            # 20 minutes since the open: 240 backfilled 5-second bars a symbol, then live
            await pumps_until(gw, lambda: task.done() or first_run.stats().received >= 500)
            first_run.request_stop()
            first = await task
            cut = await session_rows(db)
        assert first.balanced and first.coordinator.committed == len(SYMBOLS)
        assert set(cut) == set(SYMBOLS) and all(r["partial"] for r in cut.values())

        async with gateway(OPEN + timedelta(minutes=40), 600.0) as gw:
            second_run = Pipeline(spec(gw), db, dlq=dlq)
            task = asyncio.create_task(second_run.run())
            # the complete bars are written at the close, then post-market bars come
            await pumps_until(
                gw, lambda: task.done() or second_run.stats().dropped.get("outside_session", 0) > 0
            )
            second_run.request_stop()
            second = await task
            whole = {
                s: aggregate_bars(gw.bars_between(s, OPEN, CLOSE), int(OPEN.timestamp()), 86400)
                for s in SYMBOLS
            }
        rows = await session_rows(db)
    assert second.balanced and second.coordinator.committed == len(SYMBOLS)
    assert dlq.count() == 0
    for symbol in SYMBOLS:
        assert not rows[symbol]["partial"]  # the complete bar replaced the cut one
        w = whole[symbol]
        assert ohlcv(rows[symbol]) == (w.open, w.high, w.low, w.close, w.volume)
        assert ohlcv(rows[symbol]) != ohlcv(cut[symbol])
