"""Fixtures for the store tests: a migrated Database on a fresh database."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mdp_core.store.database import Database


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[Database]:
    async with Database.connect(fresh_dsn, max_size=4) as database:
        yield database


@pytest.fixture
def outside_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """MDP_HOME in a fresh directory outside /tmp/pytest-of-<user>, for tests that start their
    own embedded server: every pytest session start resets that directory to mode 0700, which
    stops the server's system user from reaching a data directory below it."""
    home = Path(tempfile.mkdtemp(prefix="mdp-home-"))
    monkeypatch.setenv("MDP_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)
