"""Fixtures for the coordinator tests: a migrated Database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mdp_core.store.database import Database


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[Database]:
    async with Database.connect(fresh_dsn, max_size=6) as database:
        yield database
