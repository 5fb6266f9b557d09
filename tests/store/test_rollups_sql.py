"""rollup_bars on the real PostgreSQL equals a pandas resample of the same 5-second bars."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pandas as pd
import pytest

from mdp_core.models import Bar
from mdp_core.store.database import Database
from mdp_core.store.rollups import (
    align_range,
    fetch_bars,
    rollup_bars,
    rollup_mismatches,
    summarize_bars,
)
from mdp_core.store.sinks import BarsSink

START = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)  # crosses UTC midnight: two days, two partitions
HOURS = 6
SYMBOLS = ("AAPL", "MSFT", "SPY")
PANDAS_RULE = {"1m": "1min", "5m": "5min", "1h": "1h", "1d": "1D"}


def random_bars(seed: int) -> list[Bar]:
    """5-second bars for several symbols with random holes, one long gap per symbol, and
    vwap / trade_count sometimes missing."""
    rng = random.Random(seed)
    out: list[Bar] = []
    slots = HOURS * 720
    for symbol in SYMBOLS:
        price = rng.uniform(20, 500)
        gap_at = rng.randrange(slots)
        gap_len = rng.randrange(100, 1000)
        for i in range(slots):
            if gap_at <= i < gap_at + gap_len or rng.random() < 0.3:
                continue
            o = price
            c = max(0.01, o + rng.gauss(0, 0.2))
            h = max(o, c) + abs(rng.gauss(0, 0.05))
            lo = max(0.001, min(o, c) - abs(rng.gauss(0, 0.05)))
            volume = float(rng.choice([0, rng.randrange(1, 5000)]))
            vwap = rng.uniform(lo, h) if rng.random() < 0.8 else None
            trades = rng.randrange(0, 50) if rng.random() < 0.9 else None
            out.append(
                Bar(
                    symbol,
                    START + timedelta(seconds=5 * i),
                    o,
                    h,
                    lo,
                    c,
                    volume,
                    "5s",
                    vwap=vwap,
                    trade_count=trades,
                    source="test",
                )
            )
            price = c
    return out


def pandas_rollup(bars: list[Bar], resolution: str) -> pd.DataFrame:
    """The oracle: resample(label='left', closed='left'), empty windows removed."""
    df = pd.DataFrame([b.to_dict() for b in bars])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df["vwap"] = df["vwap"].astype(float)
    df["trade_count"] = df["trade_count"].astype(float)
    df["pv"] = df["vwap"] * df["volume"]  # NaN where vwap is missing: skipped by sum
    df["vv"] = df["volume"].where(df["vwap"].notna())
    frames = []
    for symbol, g in df.set_index("ts").groupby("symbol"):
        r = g.resample(PANDAS_RULE[resolution], label="left", closed="left")
        out = pd.DataFrame(
            {
                "n": r["open"].count(),
                "open": r["open"].first(),
                "high": r["high"].max(),
                "low": r["low"].min(),
                "close": r["close"].last(),
                "volume": r["volume"].sum(),
                "trade_count": r["trade_count"].sum(min_count=1),
                "pv": r["pv"].sum(min_count=1),
                "vv": r["vv"].sum(min_count=1),
            }
        )
        out = out[out["n"] > 0]
        out["vwap"] = (out["pv"] / out["vv"]).where(out["vv"] > 0)
        out["symbol"] = symbol
        frames.append(out.reset_index())
    result = pd.concat(frames).sort_values(["symbol", "ts"]).reset_index(drop=True)
    return result[["symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]]


def table_frame(bars: list[Bar]) -> pd.DataFrame:
    df = pd.DataFrame([b.to_dict() for b in bars])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df["vwap"] = df["vwap"].astype(float)
    df["trade_count"] = df["trade_count"].astype(float)
    return df[["symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]]


def assert_same_bars(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(got) == len(want)
    assert got["symbol"].tolist() == want["symbol"].tolist()
    assert got["ts"].tolist() == want["ts"].tolist()
    for col in ("open", "high", "low", "close"):  # picked, not computed: exact
        assert got[col].tolist() == want[col].tolist(), col
    for col in ("volume", "vwap", "trade_count"):  # sums: order of addition may differ
        pd.testing.assert_series_equal(got[col], want[col], check_names=False, rtol=1e-9)


async def write(db: Database, bars: list[Bar]) -> None:
    sink = BarsSink(db)
    for i in range(0, len(bars), 5000):
        await sink.write(bars[i : i + 5000])


@pytest.mark.parametrize(("seed", "parallel"), [(1, 2), (2, 1), (2, 3), (1, 7)])
async def test_rollups_equal_pandas_resample(db: Database, seed: int, parallel: int) -> None:
    """Whatever the split across connections, every window is computed whole, once."""
    bars = random_bars(seed)
    await write(db, bars)
    end = START + timedelta(hours=HOURS)
    for resolution in ("1m", "5m", "1h", "1d"):
        result = await rollup_bars(db, resolution, START, end, parallel=parallel)
        want = pandas_rollup(bars, resolution)
        lo, hi = align_range(resolution, START, end)
        got = table_frame(await fetch_bars(db, None, resolution, lo, hi))
        assert_same_bars(got, want)
        assert result.rows == len(want) == result.written
        assert result.symbols == SYMBOLS
        assert result.first_ts == want["ts"].min().to_pydatetime()
        assert result.last_ts == want["ts"].max().to_pydatetime()
        stored = await fetch_bars(db, "AAPL", resolution, lo, hi)
        assert {b.source for b in stored} == {"rollup:test"}
    # the source bars are untouched
    assert len(await fetch_bars(db, None, "5s", START, end)) == len(bars)


async def test_running_twice_changes_nothing(db: Database, pg_conn: asyncpg.Connection) -> None:
    bars = random_bars(3)
    await write(db, bars)
    end = START + timedelta(hours=HOURS)
    query = "SELECT * FROM mdp.bars WHERE resolution <> '5s' ORDER BY symbol, resolution, ts"
    for resolution in ("1m", "5m", "1h", "1d"):
        await rollup_bars(db, resolution, START, end)
    before = [dict(r) for r in await pg_conn.fetch(query)]
    for resolution in ("1m", "5m", "1h", "1d"):
        again = await rollup_bars(db, resolution, START, end)
        assert again.written == 0
        assert again.rows > 0
    after = [dict(r) for r in await pg_conn.fetch(query)]
    assert after == before  # same values, same ingested_at: not even rewritten


async def test_late_bar_is_a_revision(db: Database) -> None:
    t = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    first = [
        Bar("AAPL", t + timedelta(seconds=5 * i), 10.0, 11.0, 9.0, 10.5, 100.0, "5s")
        for i in range(6)
    ]
    await write(db, first)
    r1 = await rollup_bars(db, "1m", t, t + timedelta(minutes=1))
    assert (r1.rows, r1.written) == (1, 1)
    late = Bar("AAPL", t + timedelta(seconds=55), 10.5, 12.0, 10.0, 11.5, 50.0, "5s")
    await write(db, [late])
    r2 = await rollup_bars(db, "1m", t, t + timedelta(minutes=1))
    assert (r2.rows, r2.written) == (1, 1)
    (bar,) = await fetch_bars(db, "AAPL", "1m", t, t + timedelta(minutes=1))
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (10.0, 12.0, 9.0, 11.5, 650.0)


async def test_unaligned_range_recomputes_whole_windows(db: Database) -> None:
    t = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    await write(
        db,
        [
            Bar(
                "MSFT",
                t + timedelta(seconds=5 * i),
                10.0 + i,
                10.0 + i,
                10.0 + i,
                10.0 + i,
                1.0,
                "5s",
            )
            for i in range(12)
        ],
    )
    # a range starting in the middle of the minute still yields the full minute
    result = await rollup_bars(db, "1m", t + timedelta(seconds=30), t + timedelta(seconds=31))
    assert (result.start, result.end, result.rows) == (t, t + timedelta(minutes=1), 1)
    (bar,) = await fetch_bars(db, "MSFT", "1m", t, t + timedelta(minutes=1))
    assert (bar.open, bar.close, bar.volume) == (10.0, 21.0, 12.0)


async def test_provider_bars_at_target_resolution_are_not_overwritten(db: Database) -> None:
    t = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    await write(db, [Bar("SPY", t, 50.0, 51.0, 49.0, 50.5, 7.0, "1m", source="ibkr")])
    await write(
        db,
        [
            Bar("SPY", t + timedelta(seconds=5 * i), 10.0, 11.0, 9.0, 10.0, 1.0, "5s")
            for i in range(12)
        ],
    )
    result = await rollup_bars(db, "1m", t, t + timedelta(minutes=1))
    assert (result.rows, result.written) == (1, 0)
    (bar,) = await fetch_bars(db, "SPY", "1m", t, t + timedelta(minutes=1))
    assert (bar.open, bar.volume, bar.source) == (50.0, 7.0, "ibkr")


async def test_empty_range_and_summary(db: Database) -> None:
    t = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    empty = await rollup_bars(db, "5m", t, t + timedelta(hours=1))
    assert (empty.rows, empty.written, empty.symbols, empty.first_ts) == (0, 0, (), None)
    await write(
        db,
        [
            Bar(s, t + timedelta(seconds=5 * i), 10.0 + i, 11.0 + i, 9.0, 10.0 + i, 2.0, "5s")
            for s in ("B", "A")
            for i in range(120)
        ],
    )
    await rollup_bars(db, "1m", t, t + timedelta(hours=1))
    summary = await summarize_bars(db, "1m", t, t + timedelta(hours=1), closes=5)
    assert [s.symbol for s in summary] == ["A", "B"]
    a = summary[0]
    assert (a.bars, a.open, a.high, a.low, a.close, a.volume) == (
        10,
        10.0,
        130.0,
        9.0,
        129.0,
        240.0,
    )
    assert a.closes == (81.0, 93.0, 105.0, 117.0, 129.0)
    assert a.first_ts == t and a.last_ts == t + timedelta(minutes=9)


@pytest.mark.parametrize(
    ("resolution", "source", "start", "match"),
    [
        ("7m", "5s", START, "unsupported resolution '7m'"),
        ("5s", "5s", START, "whole multiple"),
        ("1m", "5m", START, "whole multiple"),
        ("1m", "5s", START.replace(tzinfo=None), "timezone-aware"),
    ],
)
async def test_bad_arguments_are_clear_errors(
    db: Database, resolution: str, source: str, start: datetime, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        await rollup_bars(
            db, resolution, start, START + timedelta(hours=1), source_resolution=source
        )


def test_align_range_rejects_reversed_range() -> None:
    with pytest.raises(ValueError, match="before start"):
        align_range("1m", START, START - timedelta(minutes=1))


async def test_mismatches_find_stale_missing_and_orphan_rows(
    db: Database, pg_conn: asyncpg.Connection
) -> None:
    t = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    hour = (t, t + timedelta(hours=1))
    await write(
        db,
        [
            Bar(s, t + timedelta(minutes=m), 10.0, 11.0, 9.0, 10.5, 100.0, "5s")
            for s in ("A", "B")
            for m in range(3)
        ],
    )
    await rollup_bars(db, "1m", *hour)
    assert await rollup_mismatches(db, "1m", *hour) == (0, [])
    # late bar in A's first minute; C appears in the second minute; B's third minute vanishes
    await write(
        db,
        [
            Bar("A", t + timedelta(seconds=30), 10.0, 12.0, 9.0, 10.5, 1.0, "5s"),
            Bar("C", t + timedelta(minutes=1), 10.0, 11.0, 9.0, 10.5, 1.0, "5s"),
        ],
    )
    await pg_conn.execute(
        "DELETE FROM mdp.bars WHERE symbol = 'B' AND resolution = '5s' AND ts = $1",
        t + timedelta(minutes=2),
    )
    total, found = await rollup_mismatches(db, "1m", *hour)
    assert total == 3
    assert [(m.symbol, m.ts - t, m.kind) for m in found] == [
        ("A", timedelta(0), "stale"),
        ("C", timedelta(minutes=1), "missing"),
        ("B", timedelta(minutes=2), "orphan"),
    ]
    assert (await rollup_mismatches(db, "1m", *hour, limit=1))[0] == 3
    await rollup_bars(db, "1m", *hour)  # re-running fixes stale and missing rows
    total, found = await rollup_mismatches(db, "1m", *hour)
    assert [(m.symbol, m.kind) for m in found] == [("B", "orphan")]
