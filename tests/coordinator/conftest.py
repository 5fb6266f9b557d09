"""Fixtures for the coordinator tests: a migrated Database, a short-timeout pool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from mdp_core.store.database import Database, _init_connection


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[Database]:
    async with Database.connect(fresh_dsn, max_size=6) as database:
        yield database


async def open_database(
    dsn: str, *, command_timeout: float, connect_timeout: float, max_size: int = 4
) -> Database:
    """A migrated ``Database`` whose pool has short timeouts (fault tests need them;
    ``Database.connect`` does not take a command timeout)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        init=_init_connection,
        command_timeout=command_timeout,
        timeout=connect_timeout,
        server_settings={"application_name": "mdp-test", "timezone": "UTC"},
    )
    database = Database(pool, dsn)
    await database.migrate()
    return database
