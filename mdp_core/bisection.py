"""Writing one batch so that a bad item never blocks the good ones: bisection.

``Bisection(items)`` holds the parts of a batch not resolved yet (at first, the whole
batch). ``run(write, settle)`` writes the first part; when the write fails for a reason
that is not transient (``Attempt.outcome == "permanent"``) the part is split in halves and
each is written again, until the items that cause the failure are alone. Every resolved
part goes to ``settle``, which decides what it becomes (committed, dead-lettered, kept for
later) and whether to go on. What is left when ``run`` stops (or raises) stays in
``pending``: the caller can put it back (a crashed worker) or spool it (a shutdown).

One piece for the two places that write batches: the write coordinator (``write`` retries
transient errors behind a circuit breaker) and DLQ replay (one attempt per part; it stops
at the first transient error).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar

from mdp_core.errors import ErrorInfo

__all__ = ["Attempt", "Bisection", "Next"]

T = TypeVar("T")

#: What ``settle`` says after a part: go on with the next one, stop here (the rest stays
#: pending), or "cancelled": the part was settled, then the task was cancelled (``run``
#: takes the part off and raises ``CancelledError``, so it is never settled twice).
Next = Literal["continue", "stop", "cancelled"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """How writing one part ended: ``ok`` (``new_rows`` of it were new), ``permanent`` (not
    worth retrying: bisect it) or ``transient`` (still failing for an infrastructure reason
    after the retries allowed: keep it whole); with the last ``error``, the number of
    ``attempts`` and when the first failure happened."""

    outcome: Literal["ok", "permanent", "transient"]
    new_rows: int = 0
    error: BaseException | ErrorInfo | None = None
    attempts: int = 1
    first_failed: datetime | None = None


class Bisection(Generic[T]):
    """The unresolved parts of one batch (see the module docstring)."""

    __slots__ = ("pending",)

    def __init__(self, items: list[T]) -> None:
        self.pending: deque[list[T]] = deque([items])

    def unresolved(self) -> list[T]:
        """Every item not settled yet, in order."""
        return [item for part in self.pending for item in part]

    async def run(
        self,
        write: Callable[[list[T]], Awaitable[Attempt]],
        settle: Callable[[list[T], Attempt], Awaitable[Next]],
    ) -> bool:
        """Resolve the parts in order; False if ``settle`` said stop (the rest stays)."""
        pending = self.pending
        while pending:
            part = pending[0]
            attempt = await write(part)
            if attempt.outcome == "permanent" and len(part) > 1:
                mid = len(part) // 2
                pending.popleft()
                pending.appendleft(part[mid:])
                pending.appendleft(part[:mid])
                continue
            after = await settle(part, attempt)  # may raise: the part stays pending
            pending.popleft()
            if after == "cancelled":
                raise asyncio.CancelledError
            if after == "stop":
                return False
        return True
