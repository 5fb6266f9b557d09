"""Shared fixtures. PostgreSQL is real: the embedded server, started once per session."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from mdp_core.store.embedded import EmbeddedServer

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # real market data; see data/README.md


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedServer]:
    """The embedded PostgreSQL server for the whole session (deleted at the end).

    Its data lives in its own temporary directory, not under pytest's numbered base
    directories, which a concurrent pytest session may prune while this one runs."""
    root = Path(tempfile.mkdtemp(prefix="mdp-test-pg-"))
    server = EmbeddedServer(root / "data")
    server.start()
    yield server
    server.destroy()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_dsn(pg_server: EmbeddedServer) -> Iterator[str]:
    """DSN of a new, empty database on the session server (dropped after the test)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = pg_server.dsn()

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield pg_server.dsn(database=name)
    try:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except (OSError, asyncpg.PostgresError):
        pass  # a fault test may have left the server stopped


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own MDP_HOME (DLQ spool, ...) and no inherited MDP_* settings."""
    for key in list(os.environ):
        if key.startswith("MDP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MDP_HOME", str(tmp_path / "mdp-home"))


@pytest.fixture
async def pg_conn(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(fresh_dsn)
    yield conn
    await conn.close()


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A dedicated embedded server (fault tests stop and restart it), outside pytest's
    0700 temporary root so the server's system user can reach its data directory."""
    home = Path(tempfile.mkdtemp(prefix="mdp-own-pg-"))
    server = EmbeddedServer(home / "pg")
    server.start()
    try:
        yield server
    finally:
        server.destroy()
        shutil.rmtree(home, ignore_errors=True)
