"""Pieces of `mdp up` that need no running stack (the whole is verified by hand: README)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from mdp_core.cli.up import Stack, dagster_url_for
from mdp_core.store.database import load_migrations
from mdp_core.store.embedded import EmbeddedServer


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
