"""``mdp backfill`` as a user runs it (a subprocess) against the simulated gateway with IB's
real pacing rules: killed halfway, it resumes asking only for what is missing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mdp_core.calendars import open_intervals
from mdp_core.gateway import SimulatedGateway
from mdp_core.gateway.history import parse_duration, parse_end
from mdp_core.store.database import Database
from tests.ibkr.helpers import next_client_id

TIMEOUT = 90
START = datetime(2024, 2, 1, tzinfo=UTC)
JAN2, JAN4 = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)
PROGRESS = re.compile(r"backfill \[[#.]+\] (\d+)/(\d+) requests")


@pytest.fixture
async def hgw() -> AsyncIterator[SimulatedGateway]:
    async with SimulatedGateway(symbols=["AAPL", "MSFT"], port=0, seed=4, start=START) as gw:
        yield gw


async def _start(gw: SimulatedGateway, dsn: str, *args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env.update(MDP_PG_DSN=dsn, MDP_IBKR_PORT=str(gw.port), MDP_IBKR_CLIENT_ID=str(next_client_id()))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mdp_core.cli", "backfill", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def _asked(gw: SimulatedGateway, since: int) -> list[tuple[str, float, float]]:
    """(symbol, start, end) of every historical request the gateway got after the first
    ``since``."""
    by_con_id = {gw.instrument(s).con_id: s for s in gw.symbols}
    out = []
    for r in list(gw.requests_for(20))[since:]:
        end = parse_end(r.fields[15], 0)
        out.append((by_con_id[int(r.fields[2])], end - parse_duration(r.fields[17]), end))
    return out


async def _stored(dsn: str) -> set[tuple[str, datetime]]:
    async with Database.connect(dsn) as db:
        rows = await db.pool.fetch("SELECT symbol, ts FROM mdp.bars WHERE resolution = '5s'")
    return {(r["symbol"], r["ts"]) for r in rows}


def _expected() -> set[tuple[str, datetime]]:
    out = set()
    for lo, hi in open_intervals("XNYS", JAN2, JAN4):
        t = lo
        while t < hi:
            out |= {("AAPL", t), ("MSFT", t)}
            t += timedelta(seconds=5)
    return out


async def test_a_killed_backfill_resumes_asking_only_for_what_is_missing(
    hgw: SimulatedGateway, fresh_dsn: str, tmp_path: Path
) -> None:
    args = ("--symbols", "AAPL,MSFT", "--start", "2024-01-02", "--end", "2024-01-04",
            "--resolution", "5s", "--concurrency", "2")  # fmt: skip
    async with asyncio.timeout(TIMEOUT):
        first = await _start(hgw, fresh_dsn, *args)
        assert first.stderr is not None
        # 28 requests (2 symbols x 2 sessions x 7 hours); IB's 5-per-contract-per-2-s rule
        # makes them take several seconds: kill it once a third is done
        while True:
            line = (await first.stderr.readline()).decode()
            assert line, "the backfill ended before it could be killed"
            match = PROGRESS.search(line)
            if match and int(match.group(1)) >= 9:
                assert match.group(2) == "28"
                first.send_signal(signal.SIGKILL)
                break
        assert await first.wait() == -signal.SIGKILL
    stored = await _stored(fresh_dsn)
    expected = _expected()
    assert 0 < len(stored) < len(expected) and stored <= expected
    before = len(hgw.requests_for(20))

    summary_path = tmp_path / "summary.json"
    async with asyncio.timeout(TIMEOUT):
        second = await _start(hgw, fresh_dsn, *args, "--summary-json", str(summary_path))
        out, err = await second.communicate()
    assert second.returncode == 0, err.decode()[-2000:]
    assert await _stored(fresh_dsn) == expected
    asked = _asked(hgw, before)
    summary = json.loads(summary_path.read_text())
    assert 0 < summary["planned"] < 28 and summary["balanced"]
    assert all(s["failed"] == 0 for s in summary["symbols"].values())
    # The killed run's last requests still count at the gateway (IB's windows are minutes
    # long): asking one again at once is a pacing violation, answered by waiting and
    # asking again. Those retries aside, each planned request is asked once.
    assert len(asked) == summary["planned"] + summary["pacing_violations"]
    assert summary["pacing_violations"] <= 2  # at most the requests in flight at the kill
    for symbol, lo, hi in asked:  # only what was missing: not one stored bar asked again
        in_rth = {(s, t) for s, t in expected if s == symbol and lo <= t.timestamp() < hi}
        assert in_rth and not in_rth & stored, (symbol, lo, hi)
    assert "AAPL" in out.decode() and "total" in out.decode()

    async with asyncio.timeout(TIMEOUT):
        third = await _start(hgw, fresh_dsn, *args)
        out, _ = await third.communicate()
    assert third.returncode == 0 and "nothing to fetch" in out.decode()


async def test_cli_errors_and_exit_codes(hgw: SimulatedGateway, fresh_dsn: str) -> None:
    days = ("--start", "2024-01-02", "--end", "2024-01-03")
    async with asyncio.timeout(TIMEOUT):
        bad = await _start(hgw, fresh_dsn, "--symbols", "ES:FUT:CME", *days)
        _, err = await bad.communicate()
        assert bad.returncode == 2 and b"a FUT needs its expiry" in err
        when = await _start(hgw, fresh_dsn, "--symbols", "AAPL", "--start", "Jan 2", "--end", "x")
        _, err = await when.communicate()
        assert when.returncode == 2 and b"'Jan 2': expected a date YYYY-MM-DD" in err
        unknown = await _start(
            hgw, fresh_dsn, "--symbols", "AAPL,ZZZZ", *days, "--summary-json", "/dev/stdout"
        )
        out, _ = await unknown.communicate()
        assert unknown.returncode == 1
        text = out.decode()
        assert "ZZZZ (unknown to IB)" in text and '"unknown": true' in text
