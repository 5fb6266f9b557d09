"""End to end: a real `dagster dev` (webserver + daemon + code server) on the session's
embedded PostgreSQL. The supervisor sensor launches the stream's run, rows land, the run is
terminated through the GraphQL client, ends CANCELED and drained, and nothing is left
running afterwards. The slowest test of the suite (about a minute)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient

from mdp_core.cli.up import Dagster
from mdp_core.dagster_names import INSTANCE_CONFIG
from mdp_core.store.embedded import EmbeddedServer
from mdp_dagster.streaming import STREAM_TAG
from tests.dagster.helpers import sql_value

REPO = Path(__file__).resolve().parents[2]
STREAM = "e2e_quotes"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, condition: Callable[[], Any], timeout: float, proc: subprocess.Popen) -> Any:
    """Poll ``condition`` until it returns something truthy (bounded; fails early if the
    dagster dev process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster dev exited ({proc.returncode}) waiting for {what}"
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def databases(pg_server: EmbeddedServer) -> Iterator[tuple[str, str]]:
    """(mdp DSN, Dagster storage URL): two new databases on the session server."""
    suffix = uuid.uuid4().hex[:10]
    names = [f"mdp_{suffix}", f"dagster_{suffix}"]

    async def run(*sql: str) -> None:
        conn = await asyncpg.connect(pg_server.dsn())
        try:
            for statement in sql:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(*(f'CREATE DATABASE "{n}"' for n in names)))
    socket_dir = pg_server.status().socket_dir
    yield pg_server.dsn(names[0]), f"postgresql+psycopg2://postgres@/{names[1]}?host={socket_dir}"
    asyncio.run(run(*(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names)))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dagster_dev_supervises_a_stream(
    databases: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mdp_dsn, dagster_url = databases
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / INSTANCE_CONFIG).read_text())
    streams = tmp_path / "streams.yaml"
    streams.write_text(
        f"streams:\n  - name: {STREAM}\n    provider: synthetic\n    mode: quotes\n"
        "    symbols: [AAPL, MSFT]\n    provider_options: {rate: 100}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_")}
    env.update(
        DAGSTER_HOME=str(home),
        MDP_DAGSTER_PG_URL=dagster_url,
        MDP_PG_DSN=mdp_dsn,
        MDP_STREAMS_FILE=str(streams),
        MDP_HOME=str(tmp_path / "mdp-home"),
    )
    for key in ("DAGSTER_HOME", "MDP_DAGSTER_PG_URL"):  # the test reads the same instance
        monkeypatch.setenv(key, env[key])
    port = _free_port()
    log = tmp_path / "dagster-dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        dagster = Dagster("127.0.0.1", port)
        _wait("the webserver", dagster.alive, 120, proc)
        with dg.DagsterInstance.get() as instance:

            def stream_run() -> dg.DagsterRun | None:
                runs = instance.get_runs(
                    filters=dg.RunsFilter(
                        tags={STREAM_TAG: STREAM}, statuses=[dg.DagsterRunStatus.STARTED]
                    )
                )
                return runs[0] if runs else None

            run = _wait("the supervisor to start the stream's run", stream_run, 150, proc)
            assert run.tags["mdp/kind"] == "stream"
            count_sql = "SELECT count(*) FROM mdp.quotes"
            has_rows = lambda: _table_exists(mdp_dsn) and sql_value(mdp_dsn, count_sql) > 0  # noqa: E731
            _wait("rows in mdp.quotes", has_rows, 60, proc)

            # Stop the supervisor (as `mdp up` does on Ctrl-C), then terminate the run.
            status, state_id = dagster.sensor_state()
            assert status == "RUNNING" and state_id
            dagster.stop_sensor(state_id)
            client = DagsterGraphQLClient("127.0.0.1", port_number=port)
            client.terminate_run(run.run_id)
            canceled = lambda: client.get_run_status(run.run_id) == dg.DagsterRunStatus.CANCELED  # noqa: E731
            _wait("the run to end CANCELED", canceled, 120, proc)

            counters = json.loads(
                sql_value(
                    mdp_dsn,
                    "SELECT counters FROM mdp.stream_heartbeats WHERE run_id = $1 "
                    "ORDER BY ts DESC LIMIT 1",
                    run.run_id,
                )
            )
            assert counters["state"] == "finished"
            assert counters["received"] > 0 and counters["balanced"] is True
            assert counters["received"] == (
                counters["committed"] + counters["dead_lettered"] + counters["dropped_total"]
            )
            assert sql_value(mdp_dsn, count_sql) == counters["new_rows"]
            messages = [r.user_message for r in instance.all_logs(run.run_id) if r.user_message]
            assert any("termination requested" in m for m in messages)
            assert any("[mdp_core.pipeline]" in m and "balanced" in m for m in messages)
            # the supervisor is stopped: no second run was launched
            assert len(instance.get_runs(filters=dg.RunsFilter(tags={STREAM_TAG: STREAM}))) == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the code server can outlive dagster dev
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while not _group_gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_gone(proc.pid), f"processes of dagster dev left running; log: {log}"


def _table_exists(dsn: str) -> bool:
    return bool(sql_value(dsn, "SELECT to_regclass('mdp.quotes') IS NOT NULL"))
