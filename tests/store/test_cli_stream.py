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


def test_a_spool_that_cannot_be_written_at_shutdown_is_reported_not_balanced(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """The database takes no write (its table is locked) and the spool cannot be written
    either: the child process runs with a real RLIMIT_FSIZE, so writing a spool segment
    fails with EFBIG. At the end of the run the drain budget is spent, the leftovers cannot
    be spooled: the run says how many could not be persisted, is not balanced, and exits
    non-zero. Nothing is reported as "balanced" that is not."""
    import resource

    summary = tmp_path / "summary.json"
    limit = 16 * 1024  # a few DLQ records fit, a batch of them does not

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {
        **os.environ, "MDP_PG_DSN": fresh_dsn, "MDP_HOME": str(tmp_path / "home"),
        "MDP_LOG_LEVEL": "INFO", "MDP_COORDINATOR_DRAIN_TIMEOUT": "1",
    }  # fmt: skip
    # migrate first, then hold the table: every write of the stream waits (and times out)
    first = subprocess.run([*MDP, "db", "migrate"], env=env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert first.returncode == 0, first.stderr
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import asyncio, asyncpg, sys\n"
         "async def main():\n"
         f"    conn = await asyncpg.connect({fresh_dsn!r})\n"
         "    async with conn.transaction():\n"
         "        await conn.execute('LOCK TABLE mdp.quotes IN ACCESS EXCLUSIVE MODE')\n"
         "        print('locked', flush=True)\n"
         "        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)\n"
         "asyncio.run(main())\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        proc = subprocess.run(
            [*MDP, "stream", "--provider", "synthetic", "--mode", "quotes", "--symbols",
             "AAPL,MSFT", "--option", "rate=200", "--option", "start=2024-01-02T14:30:00Z",
             "--seconds", "4", "--summary-json", str(summary), "--quiet"],
            env=env, capture_output=True, text=True, timeout=120, preexec_fn=limited,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1, proc.stderr
    assert "could not be written to the dead-letter spool" in proc.stderr
    counters = json.loads(summary.read_text())
    assert counters["balanced"] is False and counters["unpersisted"] > 0
    assert counters["committed"] == 0
    assert counters["pending"] == counters["unpersisted"]  # held, counted, not vanished
    assert counters["received"] == counters["dead_lettered"] + counters["unpersisted"]
    assert "NOT BALANCED" in proc.stdout
