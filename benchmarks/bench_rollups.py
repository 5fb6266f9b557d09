"""Rolling 5-second bars up to 1-minute bars: in SQL (``rollup_bars``) against pandas.

    python -m benchmarks.bench_rollups            # 500 symbols x 4,680 bars, 3 runs each
    python -m benchmarks.bench_rollups --quick    # 50 symbols, 1 run each

Data: one trading day (6.5 h = 4,680 five-second bars per symbol) for 500 symbols
(2,340,000 rows, a random walk in whole cents) loaded into ``mdp.bars`` by COPY, then
``VACUUM ANALYZE``; the load is timed on its own and kept out of both timings.

(a) SQL: ``await rollup_bars(db, "1m", start, end, source_resolution="5s")``, one statement
    reading the 5 s bars and upserting the 1 m bars;
(b) pandas, the way it is usually done: fetch the rows (asyncpg) into a DataFrame,
    ``df.groupby("symbol").resample("1min")`` with first/max/min/last/sum (and the
    volume-weighted vwap), then write the result back (binary COPY into a TEMP stage +
    ``INSERT ... ON CONFLICT``, one transaction). Reported in total (fair: SQL writes too)
    and as read + resample only.

Before every timed run the 1 m rows are deleted and the table vacuumed (untimed), so both
write into the same empty key range; SQL and pandas alternate which goes first. Both
results are checked equal (row count, every key, OHLC exactly, volume and vwap to 1e-9).
Each figure is the median over the runs. Writes ``benchmarks/results/rollups.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import (
    bench_database,
    machine,
    markdown_table,
    median,
    now_iso,
    quiet_logging,
    say,
    server_version,
    write_json,
)
from mdp_core.store.database import STAGE_TABLES, Database
from mdp_core.store.rollups import rollup_bars
from mdp_core.store.sinks import BarsSink

START = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)  # 09:30 New York
BARS_PER_SYMBOL = 4_680  # 6.5 h of 5 s bars
END = START + timedelta(seconds=5 * BARS_PER_SYMBOL)
TARGET_SPEEDUP = 5.0
SOURCE = "bench"
_LOAD_COLUMNS = ("symbol", "resolution", "ts", "open", "high", "low", "close", "volume",
                 "vwap", "trade_count", "source")  # fmt: skip
_READ_SQL = """
SELECT symbol, ts, open, high, low, close, volume, vwap, trade_count
FROM mdp.bars
WHERE resolution = '5s' AND ts >= $1 AND ts < $2
ORDER BY symbol, ts
"""
_RESULT_SQL = """
SELECT symbol, ts, open, high, low, close, volume, vwap, trade_count
FROM mdp.bars
WHERE resolution = '1m' AND ts >= $1 AND ts < $2
ORDER BY symbol, ts
"""
_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]


def day_of_bars(symbols: list[str], seed: int) -> pd.DataFrame:
    """5 s bars of ``symbols`` over [START, END): a random walk in whole cents."""
    rng = np.random.default_rng(seed)
    n, k = BARS_PER_SYMBOL, len(symbols)
    start_cents = rng.integers(2_000, 50_000, size=(k, 1))
    steps = rng.integers(-3, 4, size=(k, n)) * np.maximum(start_cents // 10_000, 1)
    close = np.maximum(start_cents + np.cumsum(steps, axis=1), 1)
    open_ = np.concatenate([start_cents, close[:, :-1]], axis=1)
    high = np.maximum(open_, close) + rng.integers(0, 4, size=(k, n))
    low = np.maximum(np.minimum(open_, close) - rng.integers(0, 4, size=(k, n)), 1)
    volume = rng.integers(1, 50, size=(k, n)) * 100
    ts = pd.date_range(START, periods=n, freq="5s")
    return pd.DataFrame({
        "symbol": np.repeat(symbols, n),
        "resolution": "5s",
        "ts": np.tile(ts, k),
        "open": open_.ravel() / 100,
        "high": high.ravel() / 100,
        "low": low.ravel() / 100,
        "close": close.ravel() / 100,
        "volume": volume.ravel().astype(float),
        "vwap": ((high + low + close) / 300).ravel(),
        "trade_count": rng.integers(1, 40, size=k * n),
        "source": SOURCE,
    })  # fmt: skip


def _csv(symbols: list[str], seed: int) -> tuple[bytes, int]:
    frame = day_of_bars(symbols, seed)
    return frame.to_csv(index=False, header=False).encode(), len(frame)


async def load(db: Database, n_symbols: int) -> tuple[int, float]:
    """COPY ``n_symbols`` days of 5 s bars into ``mdp.bars``; return (rows, seconds).

    The next chunk's CSV is made in a thread while the server ingests the current one."""
    symbols = [f"R{i:03d}" for i in range(n_symbols)]
    chunks = [(symbols[i : i + 50], i) for i in range(0, n_symbols, 50)]
    await db.ensure_partitions("bars", [START.date()], ahead=0)
    rows = 0
    t = time.perf_counter()
    async with db.pool.acquire() as conn:
        pending = asyncio.create_task(asyncio.to_thread(_csv, *chunks[0]))
        for k in range(len(chunks)):
            data, n = await pending
            if k + 1 < len(chunks):
                pending = asyncio.create_task(asyncio.to_thread(_csv, *chunks[k + 1]))
            await conn.copy_to_table(
                "bars",
                schema_name="mdp",
                source=io.BytesIO(data),
                columns=_LOAD_COLUMNS,
                format="csv",
            )
            rows += n
    elapsed = time.perf_counter() - t
    await db.pool.execute("VACUUM ANALYZE mdp.bars")
    return rows, elapsed


async def _reset(db: Database) -> None:
    """Remove the 1 m bars (untimed) so every run writes the same empty key range."""
    await db.pool.execute("DELETE FROM mdp.bars WHERE resolution = '1m'")
    await db.pool.execute("VACUUM ANALYZE mdp.bars")


async def run_sql(db: Database) -> tuple[float, int]:
    t = time.perf_counter()
    result = await rollup_bars(db, "1m", START, END, source_resolution="5s")
    return time.perf_counter() - t, result.rows


def resample(df: pd.DataFrame) -> pd.DataFrame:
    """1-minute bars from 5 s bars, per symbol: what users write with pandas."""
    df = df.assign(pv=df["vwap"] * df["volume"]).set_index("ts")
    grouped = df.groupby("symbol").resample("1min", label="left", closed="left")
    out = grouped.agg({
        "open": "first", "high": "max", "low": "min", "close": "last",
        "volume": "sum", "pv": "sum", "trade_count": "sum",
    })  # fmt: skip
    out = out[out["open"].notna()]  # windows without bars get no row
    out["vwap"] = out["pv"] / out["volume"]
    return out.drop(columns="pv").reset_index()


async def write_back(db: Database, bars: pd.DataFrame) -> None:
    """Upsert the 1 m bars (COPY into the TEMP stage + INSERT ON CONFLICT, one transaction)."""
    n = len(bars)
    records = list(zip(
        bars["symbol"].tolist(), ["1m"] * n, bars["ts"].dt.to_pydatetime().tolist(),
        bars["open"].tolist(), bars["high"].tolist(), bars["low"].tolist(),
        bars["close"].tolist(), bars["volume"].tolist(), bars["vwap"].tolist(),
        bars["trade_count"].astype("int64").tolist(), [f"rollup:{SOURCE}"] * n, [False] * n,
        strict=True,
    ))  # fmt: skip
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            STAGE_TABLES["bars"], records=records, columns=BarsSink.columns
        )
        await conn.execute(BarsSink._insert_sql)


async def run_pandas(db: Database) -> tuple[dict[str, float], pd.DataFrame]:
    """Read, resample, write back; the seconds of each step and the 1 m bars."""
    t0 = time.perf_counter()
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(_READ_SQL, START, END)
    df = pd.DataFrame(rows, columns=_COLUMNS)
    del rows
    t1 = time.perf_counter()
    bars = resample(df)
    t2 = time.perf_counter()
    await write_back(db, bars)
    t3 = time.perf_counter()
    times = {"read_s": t1 - t0, "resample_s": t2 - t1, "write_s": t3 - t2, "total_s": t3 - t0}
    return times, bars


async def compare(db: Database, bars: pd.DataFrame) -> dict[str, Any]:
    """Check pandas' bars against the rows ``rollup_bars`` wrote (all of them)."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(_RESULT_SQL, START, END)
    sql = pd.DataFrame(rows, columns=_COLUMNS)
    merged = sql.merge(bars, on=["symbol", "ts"], how="outer", suffixes=("_sql", "_pd"),
                       indicator=True)  # fmt: skip
    both = merged[merged["_merge"] == "both"]
    exact = all((both[f"{c}_sql"] == both[f"{c}_pd"]).all() for c in ("open", "high", "low",
                                                                       "close"))  # fmt: skip
    close = all(
        np.allclose(both[f"{c}_sql"], both[f"{c}_pd"], rtol=1e-9, atol=0)
        for c in ("volume", "vwap")
    )
    counts = (both["trade_count_sql"] == both["trade_count_pd"]).all()
    picks = [0, len(both) // 2, len(both) - 1] if len(both) else []
    sample = [
        {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in row.items()}
        for row in both.iloc[picks].drop(columns="_merge").to_dict("records")
    ]
    return {
        "sql_rows": len(sql),
        "pandas_rows": len(bars),
        "keys_only_in_one": int((merged["_merge"] != "both").sum()),
        "ohlc_equal": bool(exact),
        "volume_vwap_equal_1e-9": bool(close),
        "trade_count_equal": bool(counts),
        "equal": bool(
            len(sql) == len(bars) == len(both) and exact and close and counts and len(both) > 0
        ),
        "sample": sample,
    }


async def run_async(quick: bool = False) -> dict[str, Any]:
    n_symbols = 50 if quick else 500
    repeats = 1 if quick else 3
    host = machine()
    sql_runs: list[float] = []
    pandas_runs: list[dict[str, float]] = []
    check: dict[str, Any] | None = None
    async with bench_database(max_size=3) as db:
        version = await server_version(db)
        say("rollups", f"loading {n_symbols} symbols x {BARS_PER_SYMBOL:,} bars")
        rows, load_s = await load(db, n_symbols)
        say("rollups", f"loaded {rows:,} rows in {load_s:.1f} s ({rows / load_s:,.0f} rows/s)")
        for i in range(repeats):
            for which in ("sql", "pandas") if i % 2 == 0 else ("pandas", "sql"):
                await _reset(db)
                if which == "sql":
                    seconds, bars_1m = await run_sql(db)
                    sql_runs.append(seconds)
                    say("rollups", f"run {i + 1}/{repeats}: SQL {seconds:.2f} s ({bars_1m:,} bars)")
                else:
                    times, frame = await run_pandas(db)
                    pandas_runs.append(times)
                    say(
                        "rollups",
                        f"run {i + 1}/{repeats}: pandas {times['total_s']:.2f} s (read "
                        f"{times['read_s']:.2f}, resample {times['resample_s']:.2f}, write "
                        f"{times['write_s']:.2f})",
                    )
                    if check is None:  # compare with the SQL rollup of the same data
                        await _reset(db)
                        await run_sql(db)
                        check = await compare(db, frame)
                    del frame
    assert check is not None
    sql_s = median(sql_runs)
    pandas = {k: median(r[k] for r in pandas_runs) for k in pandas_runs[0]}
    read_resample = median(r["read_s"] + r["resample_s"] for r in pandas_runs)
    speedup = pandas["total_s"] / sql_s
    return {
        "benchmark": "rollups",
        "when": now_iso(),
        "machine": {**host, "postgres": version},
        "symbols": n_symbols,
        "bars_per_symbol": BARS_PER_SYMBOL,
        "source_rows": rows,
        "rollup_rows": check["sql_rows"],
        "load_s": load_s,
        "load_rows_per_s": rows / load_s,
        "runs": repeats,
        "sql_s": sql_s,
        "sql_runs_s": sql_runs,
        "pandas_s": pandas,
        "pandas_read_resample_s": read_resample,
        "pandas_runs_s": pandas_runs,
        "speedup_total": speedup,
        "speedup_read_resample": read_resample / sql_s,
        "target_speedup": TARGET_SPEEDUP,
        "passed": speedup >= TARGET_SPEEDUP and check["equal"],
        "check": check,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Load the day, time both rollups (see the module docstring); return the figures."""
    return asyncio.run(run_async(quick))


def table(result: dict[str, Any]) -> str:
    sql, p = result["sql_s"], result["pandas_s"]
    rr = result["pandas_read_resample_s"]
    rows = [
        ("SQL rollup_bars (read + aggregate + upsert)", f"{sql:.2f}", "1.00"),
        ("pandas: read + resample + write back", f"{p['total_s']:.2f}",
         f"{p['total_s'] / sql:.2f}"),
        ("pandas: read + resample only", f"{rr:.2f}", f"{rr / sql:.2f}"),
        ("  of which read (fetch -> DataFrame)", f"{p['read_s']:.2f}", f"{p['read_s'] / sql:.2f}"),
        ("  of which groupby().resample('1min')", f"{p['resample_s']:.2f}",
         f"{p['resample_s'] / sql:.2f}"),
        ("  of which write back", f"{p['write_s']:.2f}", f"{p['write_s'] / sql:.2f}"),
    ]  # fmt: skip
    return markdown_table(("path", "seconds", "x SQL"), rows)


def describe(result: dict[str, Any]) -> str:
    c = result["check"]
    same = "identical" if c["equal"] else "DIFFERENT"
    return (
        f"{result['source_rows']:,} 5 s bars ({result['symbols']} symbols x "
        f"{result['bars_per_symbol']:,}) -> {result['rollup_rows']:,} 1 m bars; load "
        f"(untimed) {result['load_s']:.1f} s by COPY; median of {result['runs']} runs; results "
        f"{same} (rows {c['sql_rows']:,} vs {c['pandas_rows']:,}, every key and value)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 symbols, 1 run")
    args = parser.parse_args(argv)
    quiet_logging()
    result = run(quick=args.quick)
    print(table(result))
    print(describe(result))
    verdict = "meets" if result["passed"] else "MISSES"
    print(f"SQL is {result['speedup_total']:.1f}x faster than pandas ({verdict} the "
          f"{result['target_speedup']:.0f}x target)")  # fmt: skip
    print(f"wrote {write_json('rollups', result)}")


if __name__ == "__main__":
    main()
