"""Resources shared by the code location, configured from the environment.

Secrets never appear in resource config (the UI shows config): the code location gives the
DSN as ``dg.EnvVar("MDP_PG_DSN")``, which Dagster resolves at run time in the process that
needs it and shows by name only (see ``store_resource``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import dagster as dg

from mdp_core.dlq import DeadLetterQueue
from mdp_core.settings import get_settings
from mdp_core.store.database import Database

__all__ = ["DlqResource", "StoreResource", "pg_dsn_config", "store_resource"]

T = TypeVar("T")


class StoreResource(dg.ConfigurableResource):
    """mdp's PostgreSQL: ``pg_dsn`` (in the code location ``EnvVar("MDP_PG_DSN")``, resolved
    by Dagster); unset: ``MDP_PG_DSN`` through mdp's settings, else the embedded server
    under MDP_HOME (what ``mdp up`` uses when nothing is configured)."""

    pg_dsn: str | None = None

    def dsn(self) -> str | None:
        """The DSN (``None`` = embedded). Never log it unmasked."""
        if isinstance(self.pg_dsn, dg.EnvVar):  # used outside a run: resolve it now
            return self.pg_dsn.get_value() or None
        if self.pg_dsn:
            return self.pg_dsn
        secret = get_settings().pg_dsn
        return secret.get_secret_value() if secret is not None else None

    def run(self, work: Callable[[Database], Awaitable[T]]) -> T:
        """Run ``await work(db)`` on a fresh event loop and pool (for sync ops and sensors)."""

        async def main() -> T:
            async with Database.connect(self.dsn(), max_size=2) as db:
                return await work(db)

        return asyncio.run(main())


def pg_dsn_config() -> str | None:
    """What the code location puts in ``pg_dsn``: ``EnvVar("MDP_PG_DSN")`` when that is set
    (Dagster resolves it in each run and sensor tick), else ``None`` (the embedded server;
    an unset EnvVar would fail every run instead of falling back)."""
    return dg.EnvVar("MDP_PG_DSN") if get_settings().pg_dsn is not None else None


def store_resource() -> StoreResource:
    """The code location's ``store``."""
    return StoreResource(pg_dsn=pg_dsn_config())


class DlqResource(dg.ConfigurableResource):
    """The dead-letter spool: ``directory`` or ``$MDP_HOME/dlq``."""

    directory: str | None = None

    def queue(self) -> DeadLetterQueue:
        path = Path(self.directory) if self.directory else get_settings().dlq_dir
        return DeadLetterQueue(path)
