"""export_bars / export_quotes and `mdp read` / `mdp export`: Hive-partitioned files that
pyarrow reads back equal, replaced whole on re-export, never left half-written by a crash."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mdp_core import export_bars, export_quotes, read_bars, read_quotes
from mdp_core.cli import main
from mdp_core.models import Bar
from mdp_core.store.export import ExportedDay, partition_dir
from mdp_core.store.read import schema_of, to_pandas
from tests.store.test_read import MIDNIGHT, quotes_with_nulls, write

DAY0 = datetime(2024, 1, 2, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def three_days(symbols: tuple[str, ...] = ("AAPL", "MSFT"), per_day: int = 30) -> list[Bar]:
    """1m bars on 2024-01-02, 01-03 and 01-04 (none on 01-05), ``per_day`` per symbol a day."""
    out = []
    for d in range(3):
        for symbol in symbols:
            for i in range(per_day):
                o = 10.0 + d + i * 0.01
                ts = DAY0 + timedelta(days=d, hours=14, minutes=30 + i)
                vwap, trades = (None if i % 2 else o), (None if i % 3 else i)
                out.append(
                    Bar(symbol, ts, o, o + 1, o - 1, o, 100.0, "1m", vwap=vwap, trade_count=trades)
                )
    return out


def visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def hidden_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*") if p.is_file())


def dataset_frame(root: Path) -> pd.DataFrame:
    """Every exported file as one frame (pyarrow's Hive discovery), sorted by symbol, ts."""
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    frame = to_pandas(table)
    return frame.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)


def test_parquet_files_hold_the_same_rows_and_types(fresh_dsn: str, tmp_path: Path) -> None:
    asyncio.run(write(fresh_dsn, three_days()))
    start, end = DAY0, DAY0 + timedelta(days=4)
    result = export_bars(tmp_path, None, start, end, "1m", dsn=fresh_dsn)
    assert [d.day for d in result.days] == [date(2024, 1, 2 + k) for k in range(4)]
    assert result.empty_days == [date(2024, 1, 5)]
    assert result.files == [
        tmp_path / "bars" / "resolution=1m" / f"date=2024-01-0{2 + k}" / "part-0.parquet"
        for k in range(3)
    ]
    assert result.rows == 180 and visible_files(tmp_path) == result.files
    expected_schema = schema_of("bars").remove(schema_of("bars").get_field_index("resolution"))
    for path in result.files:
        assert pq.read_schema(path).remove_metadata() == expected_schema
        assert pq.read_table(path).num_rows == 60
    frame = read_bars(None, start, end, "1m", dsn=fresh_dsn)
    back = dataset_frame(tmp_path / "bars")
    assert back["resolution"].astype(str).eq("1m").all()
    assert back["date"].astype(str).tolist() == frame["ts"].dt.strftime("%Y-%m-%d").tolist()
    assert back.drop(columns=["resolution", "date"]).equals(frame.drop(columns="resolution"))
    assert "wrote 3 parquet file(s), 180 rows" in result.summary()
    assert "1 day(s) without rows" in result.summary()


def test_quotes_with_nulls_export_to_parquet_and_csv(fresh_dsn: str, tmp_path: Path) -> None:
    asyncio.run(write(fresh_dsn, quotes=quotes_with_nulls()))
    start, end = MIDNIGHT - timedelta(hours=1), MIDNIGHT + timedelta(hours=1)
    result = export_quotes(tmp_path / "pq", ["AAPL", "MSFT"], start, end, dsn=fresh_dsn)
    assert [p.parent.name for p in result.files] == ["date=2024-01-02", "date=2024-01-03"]
    assert result.files[0].parent.parent == tmp_path / "pq" / "quotes"  # no resolution level
    frame = read_quotes(None, start, end, dsn=fresh_dsn)
    back = dataset_frame(tmp_path / "pq" / "quotes").drop(columns="date")
    assert back.equals(frame) and back["bid"].isna().any()
    csv = export_quotes(tmp_path / "csv", None, start, end, format="csv", dsn=fresh_dsn)
    assert [p.name for p in csv.files] == ["part-0.csv", "part-0.csv"]
    text = pd.concat(pd.read_csv(p) for p in csv.files)
    text["ts"] = pd.to_datetime(text["ts"], utc=True)
    text = text.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    assert len(text) == len(frame) == 24
    assert text["bid"].isna().sum() == frame["bid"].isna().sum()
    assert text["ts"].tolist() == frame["ts"].tolist()


def test_bad_format_and_range_are_refused_before_reading(tmp_path: Path) -> None:
    unreachable = "postgresql://nobody:pw@127.0.0.1:1/mdp"  # never contacted
    with pytest.raises(ValueError, match=r"format 'xlsx' is invalid: expected one of parquet"):
        export_bars(
            tmp_path,
            None,
            DAY0,
            DAY0 + timedelta(days=1),
            format="xlsx",  # type: ignore[arg-type]
            dsn=unreachable,
        )
    with pytest.raises(ValueError, match=r"start .* is not before end"):
        export_quotes(tmp_path, None, DAY0, DAY0, dsn=unreachable)
    assert not any(tmp_path.iterdir())


def test_reexport_replaces_a_day_exactly(fresh_dsn: str, tmp_path: Path) -> None:
    asyncio.run(write(fresh_dsn, three_days()))
    first = export_bars(tmp_path, None, DAY0, DAY0 + timedelta(days=3), dsn=fresh_dsn)
    day2 = first.files[1]
    assert pq.read_table(day2).num_rows == 60
    # more rows arrive for that day; a narrower export of one symbol replaces the file whole
    late = [
        Bar("AAPL", DAY0 + timedelta(days=1, hours=20, minutes=i), 9.0, 10.0, 8.0, 9.5, 1.0, "1m")
        for i in range(5)
    ]
    asyncio.run(write(fresh_dsn, late))
    again = export_bars(
        tmp_path, "AAPL", DAY0 + timedelta(days=1), DAY0 + timedelta(days=2), dsn=fresh_dsn
    )
    assert again.files == [day2]
    table = pq.read_table(day2)
    assert table.num_rows == 35 and set(table.column("symbol").to_pylist()) == {"AAPL"}
    assert hidden_files(tmp_path) == []
    # a day that has no rows now (retention dropped it) keeps its archived file
    asyncio.run(_delete_day(fresh_dsn, DAY0.date()))
    kept = export_bars(tmp_path, None, DAY0, DAY0 + timedelta(days=1), dsn=fresh_dsn)
    assert kept.files == [] and kept.empty_days == [DAY0.date()]
    assert pq.read_table(first.files[0]).num_rows == 60


async def _delete_day(dsn: str, day: date) -> None:
    from mdp_core.store.database import Database

    async with Database.connect(dsn, max_size=1) as db:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        await db.pool.execute(
            "DELETE FROM mdp.bars WHERE ts >= $1 AND ts < $2", start, start + timedelta(days=1)
        )


# -- crashes ----------------------------------------------------------------------------------


def test_an_error_between_days_leaves_only_whole_files(fresh_dsn: str, tmp_path: Path) -> None:
    asyncio.run(write(fresh_dsn, three_days()))

    def stop_after_first(day: ExportedDay, done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt  # Ctrl-C between two days

    with pytest.raises(KeyboardInterrupt):
        export_bars(
            tmp_path, None, DAY0, DAY0 + timedelta(days=3), dsn=fresh_dsn, on_day=stop_after_first
        )
    (only,) = visible_files(tmp_path)
    assert only.parent.name == "date=2024-01-02" and pq.read_table(only).num_rows == 60
    assert hidden_files(tmp_path) == []


def test_an_error_while_writing_keeps_the_previous_file(
    fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(write(fresh_dsn, three_days()))
    first = export_bars(tmp_path, None, DAY0, DAY0 + timedelta(days=1), dsn=fresh_dsn)
    before = first.files[0].read_bytes()
    asyncio.run(
        write(fresh_dsn, [Bar("SPY", DAY0 + timedelta(hours=15), 5.0, 6.0, 4.0, 5.0, 1.0, "1m")])
    )
    import mdp_core.store.export as export_module

    def half_then_fail(table: pa.Table, fmt: str, handle: object) -> None:
        handle.write(b"PAR1 half a file")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "_write", half_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        export_bars(tmp_path, None, DAY0, DAY0 + timedelta(days=1), dsn=fresh_dsn)
    assert first.files[0].read_bytes() == before  # the old file, whole
    assert visible_files(tmp_path) == first.files and hidden_files(tmp_path) == []


CRASHING_EXPORT = """
import os, signal, sys
import mdp_core.store.export as export

real = export._write
calls = []

def write_then_die(table, fmt, handle):
    calls.append(1)
    if len(calls) == 2:  # the second day: half the bytes reach the disk, then SIGKILL
        handle.write(b"PAR1" + b"x" * 1000)
        handle.flush()
        os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    real(table, fmt, handle)

export._write = write_then_die
export.export_bars(sys.argv[1], None, "2024-01-02T00:00Z", "2024-01-05T00:00Z", "1m")
"""


def test_a_killed_export_leaves_no_partial_file(fresh_dsn: str, tmp_path: Path) -> None:
    asyncio.run(write(fresh_dsn, three_days()))
    env = {**os.environ, "MDP_PG_DSN": fresh_dsn}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASHING_EXPORT), str(tmp_path)],
        env=env,
        cwd=REPO,
        timeout=60,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (done,) = visible_files(tmp_path)  # the first day, whole; nothing of the second
    assert done.parent.name == "date=2024-01-02" and pq.read_table(done).num_rows == 60
    (temp,) = hidden_files(tmp_path)  # the killed write, under a hidden temporary name
    assert temp.parent.name == "date=2024-01-03" and temp.name.startswith(".part-0.parquet.")
    assert ds.dataset(tmp_path / "bars", partitioning="hive").to_table().num_rows == 60
    # the next export completes and removes what the dead process left
    result = export_bars(tmp_path, None, DAY0, DAY0 + timedelta(days=3), dsn=fresh_dsn)
    assert len(result.files) == 3 and hidden_files(tmp_path) == []
    assert dataset_frame(tmp_path / "bars").shape[0] == 180


# -- the command line ----------------------------------------------------------------------------


def mdp(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_read_prints_a_table_and_csv(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(write(fresh_dsn, three_days()))
    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    code, out, err = mdp(
        "read",
        "bars",
        "--symbols",
        "msft",
        "--start",
        "2024-01-03T00:00Z",
        "--end",
        "2024-01-04T00:00:00+00:00",
        "--limit",
        "3",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "symbol",
        "ts",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "resolution",
        "vwap",
        "trade_count",
        "source",
        "partial",
    ]
    assert len(lines) == 4 and all(line.split()[0] == "MSFT" for line in lines[1:])
    assert "2024-01-03 14:30:00+00:00" in lines[1]
    assert "first 3 rows shown: more match" in err
    code, out, err = mdp(
        "read",
        "bars",
        "--start",
        "2024-01-02T00:00Z",
        "--end",
        "2024-01-05T00:00Z",
        "--format",
        "csv",
        "--limit",
        "1000",
    )
    assert code == 0, err
    frame = pd.read_csv(__import__("io").StringIO(out))
    assert len(frame) == 180 and frame["ts"].iloc[0] == "2024-01-02T14:30:00.000000Z"
    code, out, err = mdp(
        "read", "quotes", "--start", "2024-01-02T00:00Z", "--end", "2024-01-05T00:00Z"
    )
    assert code == 0 and "no quotes in that range" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2024-01-03T00:00", "--end", "2024-01-04T00:00Z"], "is naive"),
        (["--start", "2024-01-04T00:00Z", "--end", "2024-01-03T00:00Z"], "is not before end"),
        (
            ["--start", "2024-01-03T00:00Z", "--end", "2024-01-04T00:00Z", "--resolution", "7m"],
            "unknown resolution '7m': expected one of 1s, 5s",
        ),
    ],
)
def test_cli_refuses_bad_input_with_the_value(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], message: str
) -> None:
    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    for command in (["read", "bars"], ["export", "bars", "--out", str(tmp_path)]):
        code, out, err = mdp(*command, *args)
        assert code == 2 and message in err, (command, out, err)
    assert visible_files(tmp_path) == []


def test_cli_export_writes_files_and_a_summary(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asyncio.run(write(fresh_dsn, three_days()))
    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    code, out, err = mdp(
        "export",
        "bars",
        "--symbols",
        "AAPL",
        "--start",
        "2024-01-02T00:00Z",
        "--end",
        "2024-01-05T00:00Z",
        "--resolution",
        "1m",
        "--format",
        "parquet",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    assert "exporting 1m bars" in err  # the progress bar, on stderr
    root = tmp_path / "bars" / "resolution=1m"
    assert "wrote 3 parquet file(s), 90 rows" in out and str(root) in out
    assert visible_files(tmp_path) == [
        partition_dir(tmp_path, "bars", "1m", date(2024, 1, 2 + k)) / "part-0.parquet"
        for k in range(3)
    ]
    code, out, err = mdp(
        "export",
        "quotes",
        "--start",
        "2024-01-02T00:00Z",
        "--end",
        "2024-01-03T00:00Z",
        "--format",
        "csv",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    assert "wrote 0 csv file(s), 0 rows" in out and "1 day(s) without rows" in out
