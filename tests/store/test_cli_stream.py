"""`mdp stream` as a user runs it: a real subprocess, SIGTERM mid-run, drain, accounting."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from mdp_core.dlq import DeadLetterQueue

MDP = [sys.executable, "-m", "mdp_core.cli"]


def start_stream(dsn: str, home: Path, summary: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MDP_PG_DSN": dsn, "MDP_HOME": str(home), "MDP_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [*MDP, "stream", "--provider", "synthetic", "--mode", "quotes",
         "--symbols", "AAPL,MSFT,SPY", "--option", "rate=300",
         "--option", "start=2024-01-02T14:30:00Z", "--summary-json", str(summary), *extra],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_line(proc: subprocess.Popen[str], needle: str) -> list[str]:
    """Read stderr until a line contains ``needle`` (the stream is running)."""
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"process ended before {needle!r}:\n{''.join(seen)}")


def test_sigterm_drains_and_rows_plus_dlq_equal_received(fresh_dsn: str, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    proc = start_stream(fresh_dsn, tmp_path / "home", summary)
    try:
        wait_for_line(proc, "committed")  # the first status line: rows are landing
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping, draining" in err
    counters = json.loads(summary.read_text())
    assert counters["balanced"] and counters["state"] == "finished"

    async def rows() -> int:
        conn = await asyncpg.connect(fresh_dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM mdp.quotes"))
        finally:
            await conn.close()

    spooled = DeadLetterQueue(tmp_path / "home" / "dlq").count()
    assert counters["received"] > 0 and counters["balanced"] is True
    assert counters["dropped"] == {}
    assert asyncio.run(rows()) + spooled == counters["received"]
    assert f"received {counters['received']:,}" in out


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    result = subprocess.run(
        [*MDP, "stream", "--provider", "synthetic", "--mode", "bars", "--symbols", "X",
         "--resolution", "7s"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "MDP_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "unsupported resolution '7s': expected one of" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "nosuch", "--symbols", "X"], "unknown provider 'nosuch'"),
        (["--provider", "synthetic", "--symbols", "X", "--option", "colour=red"],
         "does not accept argument 'colour'"),
    ],
)  # fmt: skip
def test_provider_errors_are_clear(
    fresh_dsn: str, tmp_path: Path, args: list[str], message: str
) -> None:
    result = subprocess.run(
        [*MDP, "stream", *args, "--seconds", "5"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "MDP_PG_DSN": fresh_dsn, "MDP_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr
