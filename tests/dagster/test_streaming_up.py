"""Pieces of `mdp up` that need no running stack (the whole is verified by hand: README)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest
import yaml

from mdp_core.cli.up import Stack, dagster_url_for, metrics_addresses
from mdp_core.store.database import load_migrations
from mdp_core.store.embedded import EmbeddedServer
from mdp_core.streams import StreamSpec


@pytest.mark.parametrize(
    ("dsn", "url"),
    [
        ("postgresql://u:pw@db.example.com:5432/mdp", "postgresql+psycopg2://u:pw@db.example.com:5432/dagster"),
        ("postgres://u@db/mdp?sslmode=require", "postgresql+psycopg2://u@db/dagster?sslmode=require"),
        ("postgresql://postgres:@/mdp?host=/tmp/pg", "postgresql+psycopg2://postgres:@/dagster?host=/tmp/pg"),
    ],
)  # fmt: skip
def test_dagster_storage_url_is_derived_from_the_mdp_dsn(dsn: str, url: str) -> None:
    assert dagster_url_for(dsn) == url


def test_a_dsn_that_is_not_postgres_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match="set MDP_DAGSTER_PG_URL"):
        dagster_url_for("mysql://u@db/mdp")


def test_start_database_prepares_the_embedded_server_for_mdp_and_dagster() -> None:
    # outside pytest's 0700 temporary root, so the server's system user can reach it
    home = Path(tempfile.mkdtemp(prefix="mdp-up-"))
    server = EmbeddedServer(home / "pg")

    def stack() -> Stack:
        return Stack(home=home, project=home, host="127.0.0.1", port=3000, stop_timeout=0)

    async def databases(dsn: str) -> tuple[set[str], int]:
        conn = await asyncpg.connect(dsn)
        try:
            names = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
            return names, await conn.fetchval("SELECT count(*) FROM mdp.schema_migrations")
        finally:
            await conn.close()

    try:
        first = stack()
        first.start_database()
        assert first.embedded is not None  # it started the server: it stops it at the end
        dsn, url = first.env["MDP_PG_DSN"], first.env["MDP_DAGSTER_PG_URL"]
        assert url == dagster_url_for(dsn)
        names, migrations = asyncio.run(databases(dsn))
        assert {"mdp", "dagster"} <= names and migrations == len(load_migrations())

        second = stack()  # the server is running and both databases exist: reused as they are
        second.start_database()
        assert second.embedded is None
        assert (second.env["MDP_PG_DSN"], second.env["MDP_DAGSTER_PG_URL"]) == (dsn, url)
        first.stop()
        assert not server.status().running
    finally:
        server.destroy()
        shutil.rmtree(home, ignore_errors=True)


def test_mdp_up_says_where_each_stream_serves_metrics() -> None:
    specs = [
        StreamSpec(name="a", symbols=["AAPL"], metrics_port=9108),
        StreamSpec(name="b", symbols=["AAPL"]),
        StreamSpec(name="c", symbols=["AAPL"], metrics_port=0, metrics_host="0.0.0.0"),
    ]
    assert metrics_addresses(specs) == [
        "stream a: Prometheus metrics on http://127.0.0.1:9108/metrics",
        "stream c: Prometheus metrics on a free port on 0.0.0.0 (see the run's log)",
    ]


def test_mdp_up_uses_the_shared_dagster_names() -> None:
    """`mdp up` and the code location agree on the names (one definition, in mdp_core)."""
    from mdp_core.cli import up
    from mdp_dagster.streaming import stream_supervisor

    assert stream_supervisor.name == up.SUPERVISOR_SENSOR
    workspace = yaml.safe_load((Path(__file__).resolve().parents[2] / up.WORKSPACE).read_text())
    assert workspace["load_from"][0]["python_module"]["location_name"] == up.LOCATION
