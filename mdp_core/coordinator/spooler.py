"""``Spooler``: how the write coordinator dead-letters items, and what it does when even the
spool cannot be written.

An item counts as dead-lettered only once ``DeadLetterQueue.put`` returned (fsync'd). If
the spool fails (disk full, read-only), the items are kept here as *unpersisted*: counted,
logged loudly, and ``raise_if_unpersisted`` turns them into a ``SpoolError``, so a stream
that lost its last safety net never looks like a clean stop.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Generic, TypeVar

from mdp_core.dlq import DeadLetterQueue
from mdp_core.errors import ErrorInfo, error_info
from mdp_core.logs import logger
from mdp_core.models import Record

__all__ = ["SpoolError", "Spooler"]

T = TypeVar("T", bound=Record)


class SpoolError(RuntimeError):
    """Items could be written neither to the database nor to the dead-letter spool."""


class Spooler(Generic[T]):
    """Dead-letters a coordinator's items into ``dlq`` as records of ``kind`` and stream
    ``name``; keeps what it could not write (``unpersisted``)."""

    def __init__(self, dlq: DeadLetterQueue, kind: str | None, name: str) -> None:
        self.dlq = dlq
        self.kind = kind
        self.name = name
        self.unpersisted: list[T] = []
        self._failure: BaseException | None = None

    async def put(
        self,
        items: list[T],
        error: BaseException | ErrorInfo,
        attempts: int,
        first_failed: datetime | None = None,
    ) -> bool:
        """Spool ``items`` in a thread; raises what the spool raises. A cancellation waits
        for the write to finish (so the items are counted exactly once) and is returned as
        True, for the caller to re-raise once it has counted them."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            None,
            lambda: self.dlq.put(
                items, error, attempts, self.kind, stream=self.name, first_failed_at=first_failed
            ),
        )
        cancelled = False
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                cancelled = True
        fut.result()
        return cancelled

    def put_now(self, items: list[T], error: BaseException | ErrorInfo, attempts: int) -> bool:
        """Spool ``items`` synchronously (a shutdown); False if the spool failed (the items
        are kept as unpersisted)."""
        try:
            self.dlq.put(items, error, attempts, self.kind, stream=self.name)
        except Exception as exc:
            self.keep(items, exc)
            return False
        return True

    def keep(self, items: list[T], exc: BaseException) -> None:
        """The spool refused ``items``: hold them, count them, say so."""
        self.unpersisted.extend(items)
        self._failure = exc
        logger.error(
            "coordinator {}: {} items could not be spooled to {}: {}; they are held in memory, "
            "neither committed nor dead-lettered",
            self.name,
            len(items),
            self.dlq,
            error_info(exc),
        )

    def raise_if_unpersisted(self) -> None:
        """``SpoolError`` naming how many items could not be spooled, if any."""
        if self.unpersisted:
            failure = self._failure
            raise SpoolError(
                f"coordinator {self.name!r}: {len(self.unpersisted)} items could not be "
                f"written to the dead-letter spool in {self.dlq.directory} "
                f"({error_info(failure) if failure else 'unknown error'}): they are neither "
                "committed nor dead-lettered (kept in memory until this process exits)"
            )
