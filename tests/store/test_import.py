"""``mdp import`` against the real PostgreSQL: the rows it stores equal those of the live
path (the replay provider through the pipeline) on the real data files; a second import adds
nothing; bad rows are reported with file and line and kept, the rest imported; rows the
database refuses go to the dead-letter spool; a malformed file is refused by name."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from mdp_core.cli import main
from mdp_core.dlq import DeadLetterQueue
from mdp_core.pipeline import Pipeline
from mdp_core.store.database import Database
from mdp_core.streams import StreamSpec

DATA = Path(__file__).resolve().parents[2] / "data"  # real market data, see data/README.md
SPY = DATA / "SPY_1min_2011-01.csv"
AAPL = DATA / "AAPL_1min_2023-05.csv"
GOOGL = DATA / "GOOGL_1min_2023-05.csv"
POLYGON = [DATA / "polygon_AAPL_quotes_page1.json", DATA / "polygon_AAPL_quotes_page2.json"]

BARS = (
    "SELECT symbol, resolution, ts, open, high, low, close, volume, vwap, trade_count, source "
    "FROM mdp.bars ORDER BY symbol, resolution, ts"
)
QUOTES = (
    "SELECT symbol, ts, bid, ask, bid_size, ask_size, last, last_size, source "
    "FROM mdp.quotes ORDER BY symbol, ts"
)


async def mdp_import(dsn: str, *args: str | Path) -> Result:
    """``mdp import`` through click's runner (in a thread: it runs its own event loop)."""
    argv = ["import", "--dsn", dsn, "--quiet", *map(str, args)]
    async with asyncio.timeout(90):
        return await asyncio.to_thread(CliRunner().invoke, main, argv)


async def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def live(dsn: str, path: Path, mode: str, symbol: str) -> None:
    """The file through the live path: replay provider -> channel -> coordinator."""
    spec = StreamSpec(
        name=f"live-{path.stem}",
        provider="replay",
        mode=mode,  # type: ignore[arg-type]
        resolution="1m",
        symbols=[symbol],
        provider_options={"path": str(path), "source": "import", "symbol": symbol},
    )
    async with asyncio.timeout(90), Database.connect(dsn, max_size=4) as db:
        stats = await Pipeline(spec, db).run()
    assert stats.error is None and stats.balanced


async def clear(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE mdp.bars, mdp.quotes")
    finally:
        await conn.close()


def parquet_copy(tmp_path: Path) -> Path:
    """GOOGL's bars as Parquet, typed (times as timestamps, a symbol column)."""
    table = pv.read_csv(GOOGL).drop_columns(["", "Unnamed: 0"])
    table = table.append_column("symbol", pa.array(["GOOGL"] * table.num_rows))
    path = tmp_path / "googl_bars_1m.parquet"
    pq.write_table(table, path)
    return path


async def test_import_equals_the_live_path_row_for_row(fresh_dsn: str, tmp_path: Path) -> None:
    parquet = parquet_copy(tmp_path)
    bar_files = [(SPY, "SPY"), (AAPL, "AAPL"), (GOOGL, "GOOGL")]

    result = await mdp_import(fresh_dsn, *(p for p, _ in bar_files))
    assert result.exit_code == 0, result.output
    assert "3 files: 18,347 rows read, 18,347 imported (18,347 new), 0 bad" in result.output
    imported = await rows(fresh_dsn, BARS)
    await clear(fresh_dsn)
    for path, symbol in bar_files:
        await live(fresh_dsn, path, "bars", symbol)
    streamed = await rows(fresh_dsn, BARS)
    assert len(imported) == 14_180 + 2_083 + 2_084
    assert imported == streamed

    await clear(fresh_dsn)
    result = await mdp_import(fresh_dsn, parquet)
    assert result.exit_code == 0, result.output
    from_parquet = await rows(fresh_dsn, BARS)
    assert from_parquet == [r for r in streamed if r[0] == "GOOGL"]

    result = await mdp_import(fresh_dsn, *POLYGON, "--format", "polygon", "--symbol", "AAPL")
    assert result.exit_code == 0, result.output
    imported_quotes = await rows(fresh_dsn, QUOTES)
    await clear(fresh_dsn)
    for path in POLYGON:
        await live(fresh_dsn, path, "quotes", "AAPL")
    assert len(imported_quotes) == 20
    assert imported_quotes == await rows(fresh_dsn, QUOTES)


async def test_a_second_import_adds_nothing(fresh_dsn: str) -> None:
    first = await mdp_import(fresh_dsn, AAPL, SPY)
    second = await mdp_import(fresh_dsn, AAPL, SPY)
    assert first.exit_code == second.exit_code == 0, (first.output, second.output)
    assert "16,263 imported (16,263 new)" in first.output
    assert "16,263 imported (0 new)" in second.output
    assert len(await rows(fresh_dsn, BARS)) == 16_263


BAD_FILE = """\
symbol,ts,open,high,low,close,volume
AAA,2024-01-02 14:30:00+00:00,10,11,9,10.5,100
AAA,2024-01-02 14:31:00+00:00,abc,11,9,10.5,100
AAA,2024-01-02 14:32:00+00:00,10,11,9,10.5,-5

AAA,2024-01-02 14:33:00+00:00,10,11,9,10.5
AAA,2024-01-02 14:34:00+00:00,10,11,9,10.5,100,extra field
AAA,not a time,10,11,9,10.5,100
AAA,2024-01-02 14:35:00+00:00,12,11,9,10.5,100
,2024-01-02 14:36:00+00:00,10,11,9,10.5,100
BBB,2024-01-02 14:37:00+00:00,10,11,9,10.5,100
"""


async def test_bad_rows_are_reported_with_file_and_line_and_the_rest_imports(
    fresh_dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "bars_1min.csv"
    path.write_text(BAD_FILE)
    rejects = tmp_path / "rejects.jsonl"
    result = await mdp_import(fresh_dsn, path, AAPL, "--rejects", rejects)
    assert result.exit_code == 3, result.output  # finished, but rows were refused
    assert "2 files: 2,092 rows read, 2,086 imported (2,086 new), 6 bad" in result.output
    expected = [
        ("line 3", "open 'abc' is not a number"),
        ("line 4", "Bar.volume -5.0 is invalid: expected a finite number >= 0"),
        ("line 6", "expected at least 7 fields, got 6"),
        ("line 8", "ts 'not a time' is not a timestamp"),
        ("line 9", "inconsistent prices open=12.0 high=11.0 low=9.0 close=10.5"),
        ("line 10", "symbol '' is missing"),
    ]
    for where, reason in expected:
        assert f"bad row: bars_1min.csv {where}: " in result.output
        assert reason in result.output
    kept = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(k["file"], k["where"]) for k in kept] == [("bars_1min.csv", w) for w, _ in expected]
    assert kept[0]["values"] == ["AAA", "2024-01-02 14:31:00+00:00", "abc", "11", "9", "10.5",
                                 "100"]  # fmt: skip
    stored = await rows(fresh_dsn, "SELECT symbol, ts FROM mdp.bars WHERE symbol <> 'AAPL'")
    # line 2, line 7 (an extra field: the replay provider takes it too) and line 11
    assert [(s, ts.minute) for s, ts in sorted(stored)] == [("AAA", 30), ("AAA", 34), ("BBB", 37)]
    assert len(await rows(fresh_dsn, BARS)) == 2_083 + 3


async def test_rows_the_database_refuses_go_to_the_dead_letter_spool(
    fresh_dsn: str, tmp_path: Path
) -> None:
    async with Database.connect(fresh_dsn, max_size=2) as db:
        # A rule of this database only: the models take the row, PostgreSQL refuses it.
        await db.pool.execute(
            "ALTER TABLE mdp.bars ADD CONSTRAINT bars_volume_cap CHECK (volume < 1000000)"
        )
    path = tmp_path / "CAP_1min.csv"
    path.write_text(
        "ts,open,high,low,close,volume\n"
        + "".join(f"2024-01-02 14:{m:02d}:00+00:00,10,11,9,10,{100 + m}\n" for m in range(40))
        + "2024-01-02 15:00:00+00:00,10,11,9,10,5000000\n"
    )
    result = await mdp_import(fresh_dsn, path)
    assert result.exit_code == 3, result.output
    assert "41 rows read, 40 imported (40 new), 0 bad, 1 refused by the database" in result.output
    (spooled,) = DeadLetterQueue().list()
    assert spooled.record().volume == 5_000_000.0 and spooled.record().symbol == "CAP"
    assert spooled.error.sqlstate == "23514"
    assert len(await rows(fresh_dsn, BARS)) == 40


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b,c\n1,2,3\n", "has no time column: expected one named ts, timestamp"),
        ("ts,size\n2024-01-02 14:30:00,3\n", "holds neither bars nor quotes"),
        ('{"results": [', "not valid JSON"),
        ("", "is empty"),
    ],
)
async def test_a_malformed_file_is_refused_by_name_and_nothing_imported(
    fresh_dsn: str, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / ("broken.json" if content.startswith("{") else "broken_1min.csv")
    path.write_text(content)
    result = await mdp_import(fresh_dsn, AAPL, path)
    assert result.exit_code == 1
    assert path.name in result.output and message in result.output
    assert "nothing was imported" in result.output
    async with Database.connect(fresh_dsn, max_size=2) as db:
        assert await db.count("bars") == 0


async def test_a_missing_file_is_refused(fresh_dsn: str, tmp_path: Path) -> None:
    result = await mdp_import(fresh_dsn, tmp_path / "nope.csv")
    assert result.exit_code == 1
    assert "nope.csv" in result.output and "does not exist" in result.output


async def test_a_file_unreadable_in_the_middle_is_named(fresh_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "XYZ_1min.csv"
    t0 = datetime(2024, 1, 2, tzinfo=UTC)
    good = "".join(f"{t0 + timedelta(minutes=m)},10,11,9,10,100\n" for m in range(5000))
    path.write_bytes(b"ts,open,high,low,close,volume\n" + good.encode() + b"\xff\xfe,1,2,3,4,5\n")
    result = await mdp_import(fresh_dsn, path)
    assert result.exit_code == 1
    assert "XYZ_1min.csv cannot be read" in result.output and "UTF8" in result.output
    assert "running the import again stores only what is missing" in result.output
