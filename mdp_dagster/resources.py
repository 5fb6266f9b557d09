"""Resources shared by the code location, configured from the environment.

Secrets never appear in resource config (the UI shows config): the DSN is read from the
environment variable named by ``dsn_env`` at run time, in the process that needs it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import dagster as dg

from mdp_core.dlq import DeadLetterQueue
from mdp_core.settings import get_settings
from mdp_core.store.database import Database

__all__ = ["DlqResource", "StoreResource"]

T = TypeVar("T")


class StoreResource(dg.ConfigurableResource):
    """mdp's PostgreSQL: ``$MDP_PG_DSN`` when set, else the embedded server under MDP_HOME."""

    dsn_env: str = "MDP_PG_DSN"

    def dsn(self) -> str | None:
        """The DSN from the environment (``None`` = embedded). Never log it unmasked."""
        return os.environ.get(self.dsn_env) or None

    def run(self, work: Callable[[Database], Awaitable[T]]) -> T:
        """Run ``await work(db)`` on a fresh event loop and pool (for sync ops and sensors)."""

        async def main() -> T:
            async with Database.connect(self.dsn(), max_size=2) as db:
                return await work(db)

        return asyncio.run(main())


class DlqResource(dg.ConfigurableResource):
    """The dead-letter spool: ``directory`` or ``$MDP_HOME/dlq``."""

    directory: str | None = None

    def queue(self) -> DeadLetterQueue:
        path = Path(self.directory) if self.directory else get_settings().dlq_dir
        return DeadLetterQueue(path)
