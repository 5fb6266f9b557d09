"""Fixtures for the security tests: a DSN with a password on the session's server, and a
capture of every loguru record."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from loguru import logger as root_logger

from mdp_core.store.embedded import EmbeddedServer
from tests.security.helpers import PASSWORD

ROLE = "mdp_sec"


@pytest.fixture(scope="session")
def secret_role(pg_server: EmbeddedServer) -> str:
    """A login role whose password is ``PASSWORD`` on the session's server.

    The embedded server trusts its unix socket, so the password is accepted but not needed:
    what matters is that it is in the DSN mdp is given."""

    async def run() -> None:
        conn = await asyncpg.connect(pg_server.dsn())
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", ROLE)
            if not exists:
                await conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        finally:
            await conn.close()

    asyncio.run(run())
    return ROLE


@pytest.fixture
def secret_dsn(fresh_dsn: str, secret_role: str, pg_server: EmbeddedServer) -> str:
    """``postgresql://mdp_sec:S3cr3t-pw@/<fresh database>?host=<socket dir>``: a reachable
    database owned by the role, reached with a DSN holding its password."""
    database = urlsplit(fresh_dsn).path.lstrip("/")

    async def run() -> None:
        conn = await asyncpg.connect(pg_server.dsn())
        try:
            await conn.execute(f'ALTER DATABASE "{database}" OWNER TO {secret_role}')
        finally:
            await conn.close()

    asyncio.run(run())
    parts = urlsplit(fresh_dsn)
    return urlunsplit(parts._replace(netloc=f"{secret_role}:{PASSWORD}@"))


@pytest.fixture
def socket_dir(pg_server: EmbeddedServer) -> str:
    """The directory of the session server's unix socket."""
    status = pg_server.status()
    assert status.socket_dir is not None
    return status.socket_dir


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every loguru record of the test, as every handler could render it: loguru's default
    text format (with exceptions, ``diagnose`` on) and its JSON serialisation."""
    out: list[str] = []
    ids = [
        root_logger.add(lambda m: out.append(str(m)), level=0),
        root_logger.add(lambda m: out.append(str(m)), level=0, serialize=True),
    ]
    yield out
    for handler_id in ids:
        root_logger.remove(handler_id)
