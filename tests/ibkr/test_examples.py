"""Each example runs as is for a few seconds (simulated gateway in-process, the test's
database) and its rows land in PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "run_dag_ibkr_to_store_simple.py": "bars",
    "run_dag_ibkr_to_coordinator.py": "bars",
    "run_dag_ibkr_to_coordinator_advanced.py": "bars",
    "run_dag_ibkr_quotes_to_coordinator.py": "quotes",
    "run_dag_ibkr_quotes_to_coordinator_advanced.py": "quotes",
}
SUMMARY = re.compile(r"^summary: ([\d,]+) rows written, ([\d,]+) dead-lettered, ", re.MULTILINE)


async def _count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM mdp.{table}"))
    finally:
        await conn.close()


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_runs_and_stores_rows(example: str, fresh_dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDP_")}
    env |= {"MDP_PG_DSN": fresh_dsn, "MDP_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), "--seconds", "3"],
        capture_output=True, text=True, timeout=90, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started the simulated IB Gateway" in done.stdout
    summary = SUMMARY.search(done.stdout)
    assert summary is not None, done.stdout
    written = int(summary.group(1).replace(",", ""))
    rows = asyncio.run(_count(fresh_dsn, EXAMPLES[example]))
    assert written > 0 and rows == written  # a fresh database: every row is this run's
    assert summary.group(2) == "0"
