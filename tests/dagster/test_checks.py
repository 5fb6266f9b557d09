"""Each asset check fails on crafted bad data and passes on good data (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mdp_core.calendars import open_intervals
from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Bar, Quote
from mdp_core.settings import CheckSettings
from mdp_core.store.database import Database
from mdp_core.store.rollups import rollup_bars
from mdp_core.store.sinks import BarsSink, QuotesSink
from mdp_dagster.assets import BARS_5S, QUOTES
from mdp_dagster.health import build_health_defs
from mdp_dagster.resources import DlqResource, StoreResource
from mdp_dagster.rollups import ROLLUP_KEYS

TUESDAY = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)  # XNYS open since 14:30 UTC
SATURDAY = datetime(2024, 1, 6, 15, 0, tzinfo=UTC)


def db_run(dsn: str, work: Callable[[Database], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with Database.connect(dsn, max_size=2) as db:
            return await work(db)

    return asyncio.run(main())


def write(dsn: str, records: list[Bar] | list[Quote]) -> None:
    async def work(db: Database) -> None:
        if records and isinstance(records[0], Bar):
            await BarsSink(db).write(records)
        else:
            await QuotesSink(db).write(records)  # type: ignore[arg-type]

    db_run(dsn, work)


def sql(dsn: str, *statements: str) -> None:
    async def work(db: Database) -> None:
        for statement in statements:
            await db.pool.execute(statement)

    db_run(dsn, work)


def bar(symbol: str, ts: datetime, resolution: str = "5s", **kw: float) -> Bar:
    fields = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0} | kw
    return Bar(symbol, ts, resolution=resolution, **fields)  # type: ignore[arg-type]


def quote(symbol: str, ts: datetime) -> Quote:
    return Quote(symbol, ts, bid=10.0, ask=10.1)


def run_check(
    key: dg.AssetKey,
    name: str,
    *,
    now: datetime = TUESDAY,
    dlq_dir: Path | None = None,
    **settings: Any,
) -> dg.AssetCheckResult:
    """Build the checks with a fixed clock and ``settings``, run the one named ``name`` of
    asset ``key`` against this test's store (MDP_PG_DSN) and spool."""
    defs = build_health_defs(CheckSettings(**settings), clock=lambda: now)
    (check,) = [c for c in defs.asset_checks or [] if dg.AssetCheckKey(key, name) in c.check_keys]
    dlq = DlqResource(directory=str(dlq_dir)) if dlq_dir else DlqResource()
    resources = {"store": StoreResource(), "dlq": dlq}
    with dg.DagsterInstance.ephemeral() as instance:  # closed even when the check raises
        result = check(dg.build_asset_check_context(resources=resources, instance=instance))
    assert isinstance(result, dg.AssetCheckResult)
    return result


def meta(result: dg.AssetCheckResult) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in result.metadata.items()}


# -- freshness ------------------------------------------------------------------------------


def test_freshness_while_the_market_is_open(store_dsn: str) -> None:
    write(store_dsn, [bar("AAPL", TUESDAY - timedelta(minutes=3))])
    write(store_dsn, [quote("AAPL", TUESDAY - timedelta(minutes=9))])
    fresh = run_check(BARS_5S.key, "fresh")
    assert fresh.passed
    assert meta(fresh)["lag_seconds"] == 180.0
    stale = run_check(QUOTES.key, "fresh")
    assert not stale.passed
    assert meta(stale)["lag_seconds"] == 540.0 and meta(stale)["market_open"] is True
    assert run_check(QUOTES.key, "fresh", freshness_minutes=10).passed


def test_freshness_with_no_rows_fails(store_dsn: str) -> None:
    result = run_check(QUOTES.key, "fresh")
    assert not result.passed
    assert meta(result)["newest_ts"] == "none in the last day"
    assert "lag_seconds" not in meta(result)


def test_freshness_passes_when_the_market_is_closed(store_dsn: str) -> None:
    write(store_dsn, [bar("AAPL", SATURDAY - timedelta(days=1))])
    closed = run_check(BARS_5S.key, "fresh", now=SATURDAY)
    assert closed.passed
    assert meta(closed)["market_open"] is False and "market closed" in meta(closed)["note"]
    # the simulated gateway trades around the clock: the same data is stale there
    assert not run_check(BARS_5S.key, "fresh", now=SATURDAY, calendar="24/7").passed


def test_freshness_gives_the_stream_time_after_the_open(store_dsn: str) -> None:
    write(store_dsn, [bar("AAPL", datetime(2024, 1, 1, 20, 59, 55, tzinfo=UTC))])  # last close
    just_opened = datetime(2024, 1, 2, 14, 32, tzinfo=UTC)
    assert run_check(BARS_5S.key, "fresh", now=just_opened).passed
    assert not run_check(BARS_5S.key, "fresh", now=just_opened + timedelta(minutes=4)).passed


def test_unknown_calendar_is_a_clear_error(store_dsn: str) -> None:
    for table in (QUOTES, BARS_5S):
        with pytest.raises(ValueError, match="unknown market calendar 'NOPE'"):
            run_check(table.key, "fresh", calendar="NOPE")
    with pytest.raises(ValueError, match="unknown market calendar 'NOPE'"):
        run_check(BARS_5S.key, "gaps", calendar="NOPE")


def test_open_intervals() -> None:
    day = datetime(2024, 1, 2, tzinfo=UTC)
    assert open_intervals("XNYS", day, day + timedelta(days=1)) == [
        (day.replace(hour=14, minute=30), day.replace(hour=21))
    ]
    assert open_intervals("XNYS", SATURDAY - timedelta(hours=5), SATURDAY) == []
    assert open_intervals("24/7", SATURDAY - timedelta(hours=1), SATURDAY) == [
        (SATURDAY - timedelta(hours=1), SATURDAY)
    ]


# -- gaps -----------------------------------------------------------------------------------


def gappy_bars() -> list[Bar]:
    """14:00-15:00 on a trading day (open from 14:30): AAPL complete; MSFT missing
    14:40:00-14:41:55 (24 open slots) and 14:05-14:25 (240 slots, market closed); SPY
    missing 14:28:00-14:30:25 (30 slots, 6 of them after the open)."""
    start = TUESDAY - timedelta(hours=1)
    holes = {
        "MSFT": [
            (start + timedelta(minutes=40), start + timedelta(minutes=42)),
            (start + timedelta(minutes=5), start + timedelta(minutes=25)),
        ],
        "SPY": [(start + timedelta(minutes=28), start + timedelta(minutes=30, seconds=30))],
    }
    out = []
    for symbol in ("AAPL", "MSFT", "SPY"):
        for i in range(720):
            ts = start + timedelta(seconds=5 * i)
            if not any(lo <= ts < hi for lo, hi in holes.get(symbol, [])):
                out.append(bar(symbol, ts))
    return out


def test_gaps_count_only_open_market_slots(store_dsn: str) -> None:
    write(store_dsn, gappy_bars())
    result = run_check(BARS_5S.key, "gaps")
    assert not result.passed
    m = meta(result)
    assert (m["symbols_checked"], m["missing_slots"], m["symbols_with_gaps"]) == (3, 30, 2)
    assert m["worst_symbols"].splitlines()[2:] == ["| MSFT | 24 |", "| SPY | 6 |"]
    assert (
        "| MSFT | 24 | 2024-01-02T14:40:00+00:00 | 2024-01-02T14:42:00+00:00 |" in m["largest_gaps"]
    )
    assert run_check(BARS_5S.key, "gaps", gap_max_missing=24).passed
    around_the_clock = meta(run_check(BARS_5S.key, "gaps", calendar="24/7", gap_max_missing=300))
    assert around_the_clock["missing_slots"] == 24 + 240 + 30


def test_gaps_pass_on_complete_bars_and_when_closed(store_dsn: str) -> None:
    write(store_dsn, [b for b in gappy_bars() if b.symbol == "AAPL"])
    complete = run_check(BARS_5S.key, "gaps", gap_max_missing=0)
    assert complete.passed and meta(complete)["missing_slots"] == 0
    closed = run_check(BARS_5S.key, "gaps", now=SATURDAY)
    assert closed.passed and "market closed" in meta(closed)["note"]


def test_gaps_flag_a_symbol_that_stopped(store_dsn: str) -> None:
    """A symbol whose bars stop mid-window (dropped after a resubscribe) misses every slot
    from its last bar to the window's end: that counts, though no later bar closes the gap."""
    complete = [b for b in gappy_bars() if b.symbol == "AAPL"]
    stop = TUESDAY - timedelta(minutes=10)
    stopped = [bar("NVDA", b.ts) for b in complete if b.ts < stop]
    write(store_dsn, complete + stopped)
    result = run_check(BARS_5S.key, "gaps")
    assert not result.passed
    m = meta(result)
    assert (m["symbols_checked"], m["missing_slots"], m["symbols_with_gaps"]) == (2, 120, 1)
    assert m["worst_symbols"].splitlines()[2:] == ["| NVDA | 120 |"]
    assert (
        "| NVDA | 120 | 2024-01-02T14:50:00+00:00 | 2024-01-02T15:00:00+00:00 |"
        in m["largest_gaps"]
    )
    assert run_check(BARS_5S.key, "gaps", gap_max_missing=120).passed
    write(store_dsn, [bar("NVDA", b.ts) for b in complete if b.ts >= stop])
    both_complete = run_check(BARS_5S.key, "gaps", gap_max_missing=0)
    assert both_complete.passed and meta(both_complete)["missing_slots"] == 0


# -- OHLC sanity and duplicates (the schema forbids both: drop its guards first) ------------


def test_ohlc_sanity(store_dsn: str) -> None:
    t = TUESDAY - timedelta(minutes=10)
    write(store_dsn, [bar("AAPL", t + timedelta(seconds=5 * i)) for i in range(10)])
    good = run_check(BARS_5S.key, "ohlc_sane")
    assert good.passed and meta(good)["rows_checked"] == 10 and meta(good)["bad_rows"] == 0
    sql(
        store_dsn,
        "ALTER TABLE mdp.bars DROP CONSTRAINT bars_prices_check",
        "ALTER TABLE mdp.bars DROP CONSTRAINT bars_volume_check",
        "INSERT INTO mdp.bars (symbol, resolution, ts, open, high, low, close, volume) VALUES "
        "('BAD1', '5s', '2024-01-02 14:55:00+00', 10, 11, 10.5, 10.7, 5), "  # low > open
        "('BAD2', '5s', '2024-01-02 14:55:00+00', 10, 11, 9, 10.5, -1), "  # negative volume
        "('BAD3', '5s', '2024-01-02 14:55:00+00', 10, 'NaN', 9, 10.5, 1), "  # NaN high
        "('OLD', '5s', '2024-01-02 12:00:00+00', 12, 11, 9, 10.5, 1)",  # bad, outside window
    )
    bad = run_check(BARS_5S.key, "ohlc_sane")
    assert not bad.passed
    assert meta(bad)["bad_rows"] == 3
    assert all(f"| {s} |" in meta(bad)["sample"] for s in ("BAD1", "BAD2", "BAD3"))


def test_ohlc_sanity_on_a_rollup(store_dsn: str) -> None:
    hour = TUESDAY - timedelta(hours=2)  # a closed partition
    write(store_dsn, [bar("AAPL", hour + timedelta(minutes=m), "1m") for m in range(5)])
    assert run_check(ROLLUP_KEYS["1m"], "ohlc_sane").passed
    sql(
        store_dsn,
        "ALTER TABLE mdp.bars DROP CONSTRAINT bars_prices_check",
        "INSERT INTO mdp.bars (symbol, resolution, ts, open, high, low, close, volume) VALUES "
        "('AAPL', '1m', '2024-01-02 13:30:00+00', 10, 9, 8, 10.5, 5)",  # close > high
    )
    assert not run_check(ROLLUP_KEYS["1m"], "ohlc_sane").passed


def test_no_duplicates(store_dsn: str) -> None:
    t = TUESDAY - timedelta(minutes=10)
    write(store_dsn, [bar("AAPL", t + timedelta(seconds=5 * i)) for i in range(10)])
    write(store_dsn, [quote("AAPL", t + timedelta(seconds=i)) for i in range(10)])
    assert run_check(BARS_5S.key, "no_duplicates").passed
    assert run_check(QUOTES.key, "no_duplicates").passed
    sql(
        store_dsn,
        "ALTER TABLE mdp.bars DROP CONSTRAINT bars_pkey",
        "ALTER TABLE mdp.quotes DROP CONSTRAINT quotes_pkey",
        "INSERT INTO mdp.bars SELECT * FROM mdp.bars WHERE ts = '2024-01-02 14:50:00+00'",
        "INSERT INTO mdp.bars SELECT * FROM mdp.bars WHERE ts = '2024-01-02 14:50:05+00'",
        "INSERT INTO mdp.bars SELECT * FROM mdp.bars WHERE ts = '2024-01-02 14:50:05+00'",
        "INSERT INTO mdp.quotes SELECT * FROM mdp.quotes WHERE ts = '2024-01-02 14:50:01+00'",
    )
    bars = run_check(BARS_5S.key, "no_duplicates")
    assert not bars.passed
    assert meta(bars)["duplicate_rows"] == 4  # (1 extra) + (3 extra)
    assert (
        meta(bars)["duplicate_keys"].splitlines()[2] == "| AAPL | 2024-01-02T14:50:05+00:00 | 4 |"
    )
    quotes = run_check(QUOTES.key, "no_duplicates")
    assert not quotes.passed and meta(quotes)["duplicate_rows"] == 1


# -- DLQ depth ------------------------------------------------------------------------------


def test_dlq_depth(tmp_path: Path) -> None:
    spool = tmp_path / "dlq"
    t = TUESDAY
    DeadLetterQueue(spool).put(
        [bar("AAPL", t + timedelta(seconds=5 * i)) for i in range(3)],
        RuntimeError("db down"),
        attempts=5,
        stream="ibkr_bars",
    )
    full = run_check(BARS_5S.key, "dlq_depth", dlq_dir=spool, dlq_max_depth=2)
    assert not full.passed
    assert meta(full)["depth"] == 3
    assert meta(full)["by_stream"] == {"ibkr_bars": 3}
    assert meta(full)["by_error"] == {"RuntimeError": 3}
    assert run_check(BARS_5S.key, "dlq_depth", dlq_dir=spool, dlq_max_depth=3).passed
    quotes = run_check(QUOTES.key, "dlq_depth", dlq_dir=spool, dlq_max_depth=0)
    assert quotes.passed and meta(quotes)["depth"] == 0  # the spool holds only bars


# -- rollups still match their source -------------------------------------------------------


def test_rollup_matches_source(store_dsn: str) -> None:
    hour = TUESDAY - timedelta(hours=2)
    # one bar every 10 seconds, 13:00:00-13:04:50
    write(
        store_dsn, [bar(s, hour + timedelta(seconds=10 * i)) for s in ("A", "B") for i in range(30)]
    )

    async def roll(db: Database) -> None:
        await rollup_bars(db, "1m", hour, hour + timedelta(hours=1))

    db_run(store_dsn, roll)
    assert run_check(ROLLUP_KEYS["1m"], "matches_source").passed
    write(store_dsn, [bar("A", hour + timedelta(minutes=3, seconds=5), high=20.0)])  # late
    stale = run_check(ROLLUP_KEYS["1m"], "matches_source")
    assert not stale.passed
    assert meta(stale)["mismatches"] == 1 and meta(stale)["by_kind"] == {"stale": 1}
    assert "| A | 2024-01-02T13:03:00+00:00 | stale |" in meta(stale)["sample"]
    db_run(store_dsn, roll)  # re-materializing fixes it
    assert run_check(ROLLUP_KEYS["1m"], "matches_source").passed
