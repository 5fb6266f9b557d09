"""The README's "Using the data" examples, run as written: Python, the command line, reading
the exported files back, and the Dagster asset that takes ``bars_1m`` as its input."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import shlex
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

import mdp_dagster.export
from mdp_core.cli import main
from mdp_core.models import Bar, Quote
from mdp_core.settings import RollupSettings
from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink, QuotesSink
from mdp_dagster.rollups import ROLLUP_KEYS, build_rollup_defs

README = Path(__file__).resolve().parents[2] / "README.md"
OPEN = datetime(2024, 1, 3, 14, 30, tzinfo=UTC)


def example(name: str) -> str:
    """The fenced code block right after ``<!-- example: name -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)\n```", text, re.S)
    assert match is not None, f"no example {name!r} in README.md"
    return match.group(1)


def run_python(code: str) -> tuple[dict[str, Any], str]:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)  # the README's own code
    return namespace, out.getvalue()


def one_minute_bars(symbols: tuple[str, ...], minutes: int) -> list[Bar]:
    out = []
    for k, symbol in enumerate(symbols):
        for i in range(minutes):
            o = 100.0 + 50 * k + ((i * 7) % 13) * 0.1
            out.append(
                Bar(
                    symbol,
                    OPEN + timedelta(minutes=i),
                    o,
                    o + 0.3,
                    o - 0.2,
                    o + 0.1,
                    100.0 + i,
                    "1m",
                )
            )
    return out


def some_quotes(symbol: str, seconds: int) -> list[Quote]:
    return [
        Quote(
            symbol,
            OPEN + timedelta(seconds=i),
            bid=10.0 + i * 0.01,
            ask=10.02 + i * 0.01,
            bid_size=None if i % 4 == 0 else 100.0,
        )
        for i in range(seconds)
    ]


def store(dsn: str, bars: list[Bar], quotes: list[Quote] = ()) -> None:  # type: ignore[assignment]
    async def go() -> None:
        async with Database.connect(dsn, max_size=2) as db:
            await BarsSink(db).write(bars)
            await QuotesSink(db).write(list(quotes))

    asyncio.run(go())


def test_python_example(store_dsn: str) -> None:
    store(store_dsn, one_minute_bars(("AAPL", "MSFT", "SPY"), 390), some_quotes("AAPL", 600))
    ns, printed = run_python(example("python"))
    assert ns["closes"].shape == (390, 2)  # AAPL and MSFT, one row per minute
    assert list(ns["closes"].columns) == ["AAPL", "MSFT"]
    assert len(ns["returns"]) == 389 and "mean" in printed
    quotes = ns["quotes"]
    assert len(quotes) == 300 and (quotes["spread"].round(6) == 0.02).all()


def test_cli_and_files_examples(
    store_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = one_minute_bars(("AAPL", "MSFT"), 390)
    bars += [
        Bar(b.symbol, b.ts + timedelta(days=1), b.open, b.high, b.low, b.close, b.volume, "1m")
        for b in bars
    ]
    store(store_dsn, bars, some_quotes("AAPL", 120))
    monkeypatch.chdir(tmp_path)
    lines = [line for line in example("cli").splitlines() if line.strip()]
    outputs = []
    for line in lines:
        args = shlex.split(line)
        assert args[0] == ".venv/bin/mdp", line
        result = CliRunner().invoke(main, args[1:], catch_exceptions=False)
        assert result.exit_code == 0, (line, result.output)
        outputs.append(result.stdout)
    table, csv, bars_summary, quotes_summary = outputs
    assert len(table.splitlines()) == 11 and table.splitlines()[1].split()[0] == "AAPL"
    assert pd.read_csv(io.StringIO(csv))["symbol"].eq("AAPL").all()
    assert "wrote 2 parquet file(s), 1,560 rows" in bars_summary
    assert "wrote 1 parquet file(s), 120 rows" in quotes_summary
    assert (tmp_path / "exports/bars/resolution=1m/date=2024-01-04/part-0.parquet").exists()
    assert (tmp_path / "exports/quotes/date=2024-01-03/part-0.parquet").exists()
    ns, printed = run_python(example("files"))
    assert "AAPL" in printed and "MSFT" in printed
    assert len(ns["january"]) == 1560
    volumes = ns["january"].groupby("symbol")["volume"].sum()
    assert volumes["AAPL"] == sum(b.volume for b in bars if b.symbol == "AAPL")


SETTINGS = RollupSettings(start=date(2024, 1, 1))


def test_dagster_example_receives_the_days_bars(
    store_dsn: str,
    resources: dict[str, object],
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """5-second bars -> the real bars_1m rollup (two hourly partitions, materialized by
    Dagster) -> the README's daily asset, which gets the day's 1m bars from the IO manager."""
    five = [
        Bar(
            symbol,
            datetime(2024, 1, 3, 14, tzinfo=UTC) + timedelta(seconds=5 * i),
            o := 20.0 + k + (i % 17) * 0.01,
            o + 0.05,
            o - 0.05,
            o,
            10.0,
            "5s",
        )
        for k, symbol in enumerate(("MSFT", "AAPL"))
        for i in range(2 * 720)  # 14:00 to 16:00
    ]
    store(store_dsn, five)
    # the README's asset takes DAILY from mdp; here the days start with the test's data
    monkeypatch.setattr(mdp_dagster.export, "DAILY", dg.DailyPartitionsDefinition("2024-01-01"))
    ns, _ = run_python(example("dagster"))
    daily_summary = ns["daily_summary"]
    dg.Definitions.validate_loadable(ns["defs"])
    rollup_1m = next(
        a for a in build_rollup_defs(SETTINGS).assets or [] if a.key == ROLLUP_KEYS["1m"]
    )
    for hour in ("2024-01-03-14:00", "2024-01-03-15:00"):
        rolled = dg.materialize(
            [rollup_1m], partition_key=hour, resources=resources, instance=instance
        )
        assert rolled.success
    result = dg.materialize(
        [rollup_1m, daily_summary],
        selection=[daily_summary.key],
        partition_key="2024-01-03",
        resources=resources,
        instance=instance,
    )
    assert result.success
    summary = result.output_for_node("daily_summary")
    frame = pd.DataFrame([b.to_dict() for b in five])
    expected = frame.groupby("symbol").agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
    )
    assert list(summary.index) == ["AAPL", "MSFT"]
    assert summary["bars"].tolist() == [120, 120]  # every minute of the two hours
    pd.testing.assert_frame_equal(summary.drop(columns="bars"), expected, check_exact=False)
