"""Reading bars back: ``read_bars`` into pandas against a raw binary COPY and against asyncpg
``fetch`` then ``pandas.DataFrame``; and the Parquet export of the same rows.

    python -m benchmarks.bench_read            # 1,000,000 1-minute bars, median of 5 runs
    python -m benchmarks.bench_read --quick    # 20,000 bars, median of 2 runs

Data: 100 symbols x 10,000 one-minute bars (390 a day, a trading session each UTC day from
14:30: 26 daily partitions, about 39,000 rows a day), loaded by one ``INSERT ... SELECT
generate_series`` (untimed), one bar in ten without ``vwap`` and ``trade_count`` (NULLs
travel too), then ``VACUUM ANALYZE``. Every path reads all of them (``[start, end)``, all
symbols, sorted by symbol then ts), interleaved run by run:

(a) raw: asyncpg ``copy_from_query(query, format="binary")`` of the very query text
    ``read_bars`` runs, the bytes appended to a list (no decoding): the transfer limit;
(b) ``read_bars(None, start, end, "1m")`` -> DataFrame, the public call as a user makes it
    (resolving the database, connecting, COPY into Arrow, ``to_pandas``); and with
    ``as_="arrow"``;
(c) asyncpg ``fetch`` of the same query, then ``pandas.DataFrame(records, columns=...)``;
(d) ``export_bars`` to Parquet (one file per UTC day, written to a temporary name, fsynced,
    renamed).

(a) and (c) run on an open connection (their connect time is left out; (b) and (d) include
theirs). Checks, outside the timings: (b) equals (c) value for value, (a) holds as many rows,
and the Parquet files read back with ``pyarrow.dataset`` equal (b).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
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
from mdp_core.store.database import Database
from mdp_core.store.export import export_bars
from mdp_core.store.read import _BARS_SQL, read_bars, to_pandas

START = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
SESSION = 390  # one-minute bars a day
TARGET_RAW = 0.7  # read_bars >= 0.7 x the raw COPY
TARGET_FETCH = 3.0  # read_bars >= 3 x fetch -> DataFrame
TARGET_EXPORT = 0.3  # export >= 0.3 x the raw COPY

_LOAD_SQL = """
INSERT INTO mdp.bars (symbol, resolution, ts, open, high, low, close, volume, vwap,
                      trade_count, source)
SELECT 'B' || lpad(s::text, 3, '0'), '1m',
       $1::timestamptz + (i / 390) * interval '1 day' + (i % 390) * interval '1 minute',
       p, p + 0.05, p - 0.05, p + 0.02, 100 + (i * 7 + s) % 1000,
       CASE WHEN i % 10 = 0 THEN NULL ELSE p + 0.01 END,
       CASE WHEN i % 10 = 0 THEN NULL ELSE (i + s) % 50 END,
       'bench'
FROM generate_series(0, $2 - 1) AS s, generate_series(0, $3 - 1) AS i,
     LATERAL (SELECT 100 + s + ((i * 31 + s) % 997) * 0.01 AS p) AS price
"""


def _end(bars: int) -> datetime:
    return START + timedelta(days=-(-bars // SESSION))


async def load(db: Database, symbols: int, bars: int) -> tuple[int, float]:
    """Load ``symbols`` x ``bars`` one-minute bars; return (rows, seconds)."""
    days = -(-bars // SESSION)
    await db.ensure_partitions("bars", [START.date() + timedelta(days=d) for d in range(days)])
    t = time.perf_counter()
    await db.pool.execute(_LOAD_SQL, START, symbols, bars)
    elapsed = time.perf_counter() - t
    await db.pool.execute("VACUUM ANALYZE mdp.bars")
    return symbols * bars, elapsed


async def query_text(db: Database, end: datetime) -> str:
    """The query ``read_bars(None, START, end, "1m")`` runs, built by the same statement."""
    row = await db.pool.fetchrow(_BARS_SQL, START.isoformat(), end.isoformat(), None, None, "1m")
    assert row is not None
    return str(row["query"])


def copy_rows(chunks: list[bytes]) -> int:
    """The number of tuples in a binary COPY stream (walks the field lengths)."""
    data = b"".join(chunks)
    pos = 11 + 4  # signature, flags
    (ext,) = struct.unpack_from("!i", data, pos)
    pos += 4 + ext
    rows = 0
    while True:
        (fields,) = struct.unpack_from("!h", data, pos)
        pos += 2
        if fields == -1:
            return rows
        for _ in range(fields):
            (length,) = struct.unpack_from("!i", data, pos)
            pos += 4 + max(length, 0)
        rows += 1


async def measure_raw(conn: asyncpg.Connection, query: str) -> tuple[float, list[bytes]]:
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    t = time.perf_counter()
    await conn.copy_from_query(query, output=sink, format="binary")
    return time.perf_counter() - t, chunks


async def measure_fetch(conn: asyncpg.Connection, query: str) -> tuple[float, pd.DataFrame]:
    t = time.perf_counter()
    records = await conn.fetch(query)
    frame = pd.DataFrame(records, columns=list(records[0].keys()) if records else None)
    elapsed = time.perf_counter() - t
    return elapsed, frame


def measure_read(dsn: str, end: datetime, as_: str) -> tuple[float, Any]:
    t = time.perf_counter()
    result = read_bars(None, START, end, "1m", dsn=dsn, as_=as_)  # type: ignore[arg-type]
    return time.perf_counter() - t, result


def measure_export(dsn: str, end: datetime, out: Path) -> tuple[float, Any]:
    t = time.perf_counter()
    result = export_bars(out, None, START, end, "1m", dsn=dsn)
    return time.perf_counter() - t, result


def frames_equal(ours: pd.DataFrame, theirs: pd.DataFrame) -> bool:
    """``read_bars``' frame against fetch -> DataFrame, once both use the same dtypes (the
    query leaves out ``resolution``, which ``read_bars`` adds: it must be "1m" throughout)."""
    if not (ours["resolution"] == "1m").all():
        return False
    ours = ours.drop(columns="resolution")
    theirs = theirs.copy()
    theirs["ts"] = pd.to_datetime(theirs["ts"], utc=True).astype(ours["ts"].dtype)
    for column in ours.columns:
        if column != "ts":
            theirs[column] = theirs[column].astype(ours[column].dtype)
    return bool(ours.equals(theirs[list(ours.columns)]))


def parquet_equal(root: Path, ours: pd.DataFrame) -> bool:
    """The exported files, read back as one Hive dataset, against ``read_bars``' frame."""
    import pyarrow.dataset as ds

    table = ds.dataset(root / "bars", format="parquet", partitioning="hive").to_table()
    back = to_pandas(table.drop_columns(["date"]))
    back["resolution"] = back["resolution"].astype(str)
    back = back.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    return bool(back[list(ours.columns)].astype(ours.dtypes.to_dict()).equals(ours))


async def run_async(quick: bool = False) -> dict[str, Any]:
    symbols, bars = (10, 2_000) if quick else (100, 10_000)
    repeats = 2 if quick else 5
    end = _end(bars)
    host = machine()
    runs: dict[str, list[float]] = {"raw": [], "read": [], "arrow": [], "fetch": [], "export": []}
    checks: dict[str, Any] = {}
    export_info: dict[str, Any] = {}
    async with bench_database(max_size=2) as db:
        version = await server_version(db)
        say("read", f"loading {symbols} symbols x {bars:,} one-minute bars")
        rows, load_s = await load(db, symbols, bars)
        say("read", f"loaded {rows:,} rows in {load_s:.1f} s")
        query = await query_text(db, end)
        conn = await asyncpg.connect(db.dsn)
        try:
            # warm up: imports, the server's caches, the first connection of each path
            await asyncio.to_thread(measure_read, db.dsn, end, "pandas")
            await measure_raw(conn, query)
            with tempfile.TemporaryDirectory(prefix="mdp-bench-read-") as tmp:
                for i in range(repeats):
                    raw_s, chunks = await measure_raw(conn, query)
                    runs["raw"].append(raw_s)
                    if i == 0:
                        checks["raw_rows"] = copy_rows(chunks)
                        checks["raw_bytes"] = sum(map(len, chunks))
                    del chunks
                    read_s, frame = await asyncio.to_thread(measure_read, db.dsn, end, "pandas")
                    runs["read"].append(read_s)
                    arrow_s, _ = await asyncio.to_thread(measure_read, db.dsn, end, "arrow")
                    runs["arrow"].append(arrow_s)
                    fetch_s, fetched = await measure_fetch(conn, query)
                    runs["fetch"].append(fetch_s)
                    export_s, exported = await asyncio.to_thread(
                        measure_export, db.dsn, end, Path(tmp) / f"run{i}"
                    )
                    runs["export"].append(export_s)
                    if i == 0:
                        checks["read_rows"] = len(frame)
                        checks["fetch_equal"] = frames_equal(frame, fetched)
                        checks["parquet_equal"] = parquet_equal(Path(tmp) / "run0", frame)
                        export_info = {
                            "files": len(exported.files),
                            "bytes": exported.bytes,
                            "rows": exported.rows,
                        }
                    del frame, fetched
                    say(
                        "read",
                        f"run {i + 1}/{repeats}: raw {raw_s:.2f} s, read_bars {read_s:.2f} s "
                        f"(arrow {arrow_s:.2f} s), fetch+DataFrame {fetch_s:.2f} s, export "
                        f"{export_s:.2f} s",
                    )
        finally:
            await conn.close()
    seconds = {k: median(v) for k, v in runs.items()}
    rate = {k: rows / s for k, s in seconds.items()}
    checks["equal"] = bool(
        checks["fetch_equal"]
        and checks["parquet_equal"]
        and checks["raw_rows"] == checks["read_rows"] == rows == export_info["rows"]
    )
    ratios = {
        "read_to_raw": rate["read"] / rate["raw"],
        "read_to_fetch": rate["read"] / rate["fetch"],
        "arrow_to_raw": rate["arrow"] / rate["raw"],
        "export_to_raw": rate["export"] / rate["raw"],
    }
    passed = {
        "read_vs_raw": ratios["read_to_raw"] >= TARGET_RAW,
        "read_vs_fetch": ratios["read_to_fetch"] >= TARGET_FETCH,
        "export_vs_raw": ratios["export_to_raw"] >= TARGET_EXPORT,
    }
    return {
        "benchmark": "read",
        "when": now_iso(),
        "machine": {**host, "postgres": version},
        "symbols": symbols,
        "bars_per_symbol": bars,
        "rows": rows,
        "days": (end - START).days,
        "load_s": load_s,
        "runs": repeats,
        "seconds": seconds,
        "runs_s": runs,
        "rows_per_s": rate,
        "ratios": ratios,
        "targets": {
            "read_to_raw": TARGET_RAW,
            "read_to_fetch": TARGET_FETCH,
            "export_to_raw": TARGET_EXPORT,
        },
        "passed": passed,
        "met_targets": all(passed.values()) and checks["equal"],
        "export": export_info,
        "check": checks,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Load the bars, time every path (see the module docstring); return the figures."""
    return asyncio.run(run_async(quick))


def table(result: dict[str, Any]) -> str:
    s, r = result["seconds"], result["rows_per_s"]
    raw = r["raw"]
    rows = [
        ("raw binary COPY (asyncpg copy_from_query, bytes only)", s["raw"], r["raw"]),
        ("read_bars -> pandas DataFrame", s["read"], r["read"]),
        ("read_bars(as_='arrow') -> pyarrow.Table", s["arrow"], r["arrow"]),
        ("asyncpg fetch -> pandas.DataFrame", s["fetch"], r["fetch"]),
        ("export_bars -> Parquet, one file a day", s["export"], r["export"]),
    ]
    return markdown_table(
        ("path", "seconds", "rows/s", "x raw COPY"),
        [(name, f"{sec:.2f}", f"{rate:,.0f}", f"{rate / raw:.2f}") for name, sec, rate in rows],
    )


def describe(result: dict[str, Any]) -> str:
    c, e = result["check"], result["export"]
    same = "equal" if c["equal"] else "NOT EQUAL"
    return (
        f"{result['rows']:,} one-minute bars ({result['symbols']} symbols x "
        f"{result['bars_per_symbol']:,}, {result['days']} UTC days), all read in one call, "
        f"sorted by symbol then ts; median of {result['runs']} interleaved runs; results "
        f"{same} (read_bars vs fetch value for value, {c['raw_rows']:,} rows in the raw COPY, "
        f"{e['files']} Parquet files of {e['bytes'] / 2**20:,.1f} MiB read back with "
        f"pyarrow.dataset); read_bars is {result['ratios']['read_to_fetch']:.1f} x "
        "fetch -> DataFrame"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 bars, 2 runs")
    args = parser.parse_args(argv)
    quiet_logging()
    result = run(quick=args.quick)
    print(table(result))
    print(describe(result))
    verdict = "meets" if result["met_targets"] else "MISSES"
    ratios = result["ratios"]
    print(
        f"read_bars {ratios['read_to_raw']:.2f} x raw, {ratios['read_to_fetch']:.1f} x fetch; "
        f"export {ratios['export_to_raw']:.2f} x raw ({verdict} the targets)"
    )
    if not args.quick:
        print(f"wrote {write_json('read', result)}")


if __name__ == "__main__":
    main()
