"""Session bars end to end: ``mdp stream --resolution 1d --sessions XNYS`` replaying a month of
real SPY minutes (data/SPY_1min_2011-01.csv) stores one bar per NYSE session, equal to a
pandas computation from the same file, with the accounting balanced."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pandas as pd
import pytest
from click.testing import CliRunner

from mdp_core.calendars import get_calendar
from mdp_core.cli import main

MDP = [sys.executable, "-m", "mdp_core.cli"]
SPY = Path(__file__).resolve().parents[2] / "data" / "SPY_1min_2011-01.csv"


def expected_sessions() -> tuple[pd.DataFrame, int, int]:
    """Per XNYS session, OHLCV of the file's minutes in ``[open, close)``; the number of
    rows, and of rows outside every session. The file stamps a minute with its END."""
    rows = pd.read_csv(SPY, sep=";", header=None,
                       names=["stamp", "open", "high", "low", "close", "volume"])  # fmt: skip
    rows["ts"] = pd.to_datetime(rows["stamp"], format="%Y%m%d %H%M%S", utc=True)
    rows["ts"] = (rows["ts"] - pd.Timedelta(minutes=1)).astype("datetime64[ns, UTC]")
    schedule = get_calendar("XNYS").schedule.loc["2010-12-30":"2011-02-02", ["open", "close"]]
    schedule = schedule.reset_index(drop=True).astype("datetime64[ns, UTC]")
    schedule.columns = ["session_open", "session_close"]
    matched = pd.merge_asof(
        rows.sort_values("ts"),
        schedule,
        left_on="ts",
        right_on="session_open",
        direction="backward",
    )
    inside = matched[matched["ts"] < matched["session_close"]]
    bars = inside.groupby("session_open").agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"),
        close=("close", "last"), volume=("volume", "sum"),
    )  # fmt: skip
    return bars, len(rows), len(rows) - len(inside)


def test_session_bars_of_real_spy_minutes_equal_pandas(fresh_dsn: str, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        [*MDP, "stream", "--provider", "replay", "--mode", "bars", "--resolution", "1d",
         "--sessions", "XNYS", "--symbols", "SPY", "--option", f"path={SPY}",
         "--name", "spy-sessions", "--quiet", "--summary-json", str(summary)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MDP_PG_DSN": fresh_dsn, "MDP_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    async def stored() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(fresh_dsn)
        try:
            return await conn.fetch(
                "SELECT ts, open, high, low, close, volume, partial FROM mdp.bars "
                "WHERE symbol = 'SPY' AND resolution = '1d' ORDER BY ts"
            )
        finally:
            await conn.close()

    rows = asyncio.run(stored())
    bars, received, outside = expected_sessions()
    assert len(bars) == 20  # NYSE sessions of January 2011 (MLK day, the 17th, is a holiday)
    assert [r["ts"] for r in rows] == [t.to_pydatetime() for t in bars.index]
    for row, (_, want) in zip(rows, bars.iterrows(), strict=True):
        assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == (
            want["open"],
            want["high"],
            want["low"],
            want["close"],
            want["volume"],
        ), row["ts"]
        assert not row["partial"]  # every session's last minute is in the file
    counters = json.loads(summary.read_text())
    assert counters["balanced"] and counters["state"] == "finished"
    assert (counters["received"], counters["committed"]) == (received, len(bars))
    assert counters["dropped"] == {
        "outside_session": outside,
        "resampled": received - outside - len(bars),
    }
    assert outside > 0  # the file has pre- and post-market minutes
    assert f"outside_session {outside:,}" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resolution", "1h", "--sessions", "XNYS"],
         "sessions 'XNYS' is set with mode 'bars' and resolution '1h': expected mode 'bars' "
         "and resolution '1d'"),
        (["--resolution", "1d", "--sessions", "NYSX"],
         "unknown market calendar 'NYSX': expected an exchange_calendars name"),
    ],
)  # fmt: skip
def test_bad_session_options_are_usage_errors(
    tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDP_HOME", str(tmp_path))
    result = CliRunner().invoke(
        main, ["stream", "--provider", "replay", "--mode", "bars", "--symbols", "SPY", *args]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_a_streams_file_with_sessions_on_5s_bars_names_the_entry(tmp_path: Path) -> None:
    from mdp_core.streams import StreamsConfigError, load_streams

    path = tmp_path / "streams.yaml"
    path.write_text("streams: [{name: a, mode: bars, symbols: [SPY], sessions: XNYS}]")
    with pytest.raises(
        StreamsConfigError,
        match=r"streams\[0\] \('a'\): field '\(entry\)': .*sessions 'XNYS' is set with mode "
        r"'bars' and resolution '5s'",
    ):
        load_streams(path)
