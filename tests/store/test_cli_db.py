"""`mdp db` against a temporary MDP_HOME (its own embedded server) and against MDP_PG_DSN."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from mdp_core.cli import main
from mdp_core.store.embedded import EmbeddedServer

PASSWORD = "s3cr3t-Pw"


def _mdp(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["db", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_embedded_lifecycle(outside_home: Path) -> None:
    server = EmbeddedServer(outside_home / "pg")
    try:
        code, out = _mdp("status")
        assert code == 1
        assert "running:  no" in out

        code, out = _mdp("url")
        assert code == 1
        assert "not running" in out

        code, out = _mdp("start")
        assert code == 0, out
        assert f"data in {server.data_dir}" in out
        assert "001_initial" in out
        assert server.status().running

        code, out = _mdp("status")
        assert code == 0, out
        assert f"pid {server.status().pid}" in out
        assert "schema:   version 3" in out
        assert "mdp.quotes: 0" in out

        code, out = _mdp("url")
        assert code == 0
        assert out.strip() == server.dsn(database="mdp").replace("postgres:@", "postgres:***@")
        code, out = _mdp("url", "--show-password")
        assert out.strip() == server.dsn(database="mdp")

        code, out = _mdp("migrate")
        assert code == 0, out
        assert "schema up to date (003_backfill_ranges)" in out
        assert "applied" not in out  # nothing was pending

        code, out = _mdp("start")  # idempotent: reuses the running server
        assert code == 0, out
        assert f"pid {server.status().pid}" in out

        code, out = _mdp("stop")
        assert code == 0
        assert "stopped" in out
        assert not server.status().running
        code, out = _mdp("stop")
        assert "was not running" in out
    finally:
        server.destroy()


def test_external_dsn_is_masked_and_not_managed(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_dsn.replace("postgres:@", f"postgres:{PASSWORD}@")  # trust auth ignores it
    monkeypatch.setenv("MDP_PG_DSN", dsn)

    for command in (("start",), ("stop",)):
        code, out = _mdp(*command)
        assert code == 0
        assert "MDP_PG_DSN is set" in out
        assert PASSWORD not in out

    code, out = _mdp("status")  # not migrated yet
    assert code == 0, out
    assert "external (MDP_PG_DSN)" in out
    assert "schema:   version 0" in out
    assert PASSWORD not in out

    code, out = _mdp("migrate")
    assert code == 0, out
    assert "applied 001_initial" in out

    code, out = _mdp("url")
    assert out.strip() == dsn.replace(PASSWORD, "***")
    code, out = _mdp("url", "--show-password")
    assert out.strip() == dsn


def test_psql_runs_against_the_database(fresh_dsn: str) -> None:
    dsn = fresh_dsn.replace("postgres:@", f"postgres:{PASSWORD}@")
    env = {**os.environ, "MDP_PG_DSN": dsn}
    # psql replaces the process (exec), so run the CLI in a child process
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mdp_core.cli import main; main()",
            "db",
            "psql",
            "-At",
            "-c",
            "SELECT current_database(), 6 * 7",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    database = urlsplit(fresh_dsn).path.lstrip("/")
    assert result.stdout.strip() == f"{database}|42"


def test_unreachable_external_dsn_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_PG_DSN", f"postgresql://trader:{PASSWORD}@127.0.0.1:1/marketdb")
    code, out = _mdp("status")
    assert code == 1
    assert "127.0.0.1:1" in out
    assert PASSWORD not in out
    code, out = _mdp("migrate")
    assert code == 1
    assert "cannot connect" in out
    assert PASSWORD not in out
