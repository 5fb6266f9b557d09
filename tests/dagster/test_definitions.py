"""The code location loads and validates (in process and with the `dagster` CLI), the
repository's dagster.yaml makes a working instance, and the default streams file is valid."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import dagster as dg
import pytest

from mdp_core.dagster_names import INSTANCE_CONFIG
from mdp_core.store.embedded import EmbeddedServer
from mdp_core.streams import load_streams
from mdp_dagster.assets import BARS_5S, QUOTES
from mdp_dagster.definitions import defs
from mdp_dagster.streaming import KIND_TAG, stream_job, stream_supervisor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dagster_db(pg_server: EmbeddedServer) -> Iterator[str]:
    """A new database for Dagster's storage on the session server, as a SQLAlchemy URL."""
    name = f"dagster_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(pg_server.dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    socket_dir = pg_server.status().socket_dir
    yield f"postgresql+psycopg2://postgres@/{name}?host={socket_dir}"
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_definitions_load_and_validate() -> None:
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("stream_job")
    assert job.executor_def is dg.in_process_executor
    assert job.tags[KIND_TAG] == "stream"
    assert job.tags["dagster/max_retries"] == "0"  # the supervisor is the only retry
    sensor = defs.resolve_sensor_def("stream_supervisor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    assert {QUOTES.key, BARS_5S.key} <= keys
    assert stream_job.name == "stream_job" and stream_supervisor.name == "stream_supervisor"
    assert set(defs.resources or {}) >= {"store", "dlq"}


def validate_workspace(env: dict[str, str]) -> str:
    """``dagster definitions validate -w workspace.yaml`` in the repository root with
    ``env``; asserts it succeeds and returns its output."""
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Validation successful" in output
    return output


def test_dagster_cli_validates_the_workspace(dagster_db: str, tmp_path: Path) -> None:
    # with the repository's dagster.yaml, as `mdp up` runs it
    (tmp_path / "dagster.yaml").write_text((REPO / INSTANCE_CONFIG).read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_")}
    env.update(DAGSTER_HOME=str(tmp_path), MDP_DAGSTER_PG_URL=dagster_db)
    validate_workspace(env)


def test_dagster_cli_validates_with_nothing_exported() -> None:
    """In the repository root, with no MDP_* and no DAGSTER_* variable: Dagster uses a
    temporary instance (the instance settings are not in the root), the code location loads
    (mdp's resources fall back to the embedded server under .mdp at run time)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDP_", "DAGSTER_"))}
    assert "Traceback" not in validate_workspace(env)


def test_default_streams_file_is_valid() -> None:
    specs = {s.name: s for s in load_streams(REPO / "streams.yaml")}
    assert {"ibkr_bars", "ibkr_quotes"} <= set(specs)
    assert specs["ibkr_bars"].mode == "bars" and specs["ibkr_bars"].resolution == "5s"
    assert specs["ibkr_quotes"].mode == "quotes"
    assert specs["ibkr_bars"].client_id != specs["ibkr_quotes"].client_id


def test_repository_dagster_yaml_makes_a_postgres_instance(
    dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dagster.yaml").write_text((REPO / INSTANCE_CONFIG).read_text())
    monkeypatch.setenv("MDP_DAGSTER_PG_URL", dagster_db)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.run_monitoring_enabled
        settings = instance.get_concurrency_config().run_queue_config
        assert settings is not None and settings.max_concurrent_runs == 50
        limits = settings.tag_concurrency_limits
        assert limits == [
            {"key": "mdp/stream", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert not instance.run_retries_enabled
        # the rollups' pool is limited (the rollup assets declare pool mdp_rollups)
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 2
        for resolution in ("1m", "5m", "1h", "1d"):
            rollup = defs.resolve_assets_def(dg.AssetKey(["mdp", f"bars_{resolution}"]))
            assert rollup.node_def.pool == "mdp_rollups"
        assert not instance.telemetry_enabled
        # and it stores runs
        config = {"ops": {"run_stream": {"config": {"stream": "x"}}}}
        run = instance.create_run_for_job(stream_job, run_config=config, tags={"mdp/stream": "x"})
        assert instance.get_run_by_id(run.run_id) is not None


def test_table_assets_carry_the_columns_of_the_migrated_tables(store_dsn: str) -> None:
    """dagster/table_name and dagster/column_schema of the raw tables and every rollup equal
    what a migrated database has (names, types, nullability, in order)."""
    from mdp_core.store.database import Database

    async def columns(table: str) -> list[tuple[str, str, bool]]:
        async with Database.connect(store_dsn) as db:
            rows = await db.pool.fetch(
                "SELECT attname, format_type(atttypid, atttypmod) AS type, "
                "NOT attnotnull AS nullable FROM pg_attribute "
                "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum",
                table,
            )
        return [(r["attname"], r["type"], r["nullable"]) for r in rows]

    graph = defs.resolve_asset_graph()
    keys = [QUOTES.key, BARS_5S.key, *(dg.AssetKey(["mdp", f"bars_{r}"]) for r in ("1m", "1d"))]
    for key in keys:
        meta = graph.get(key).metadata
        table = meta["dagster/table_name"].value
        schema = meta["dagster/column_schema"].value
        declared = [(c.name, c.type, c.constraints.nullable) for c in schema.columns]
        assert declared == asyncio.run(columns(table)), key
