"""Which way a sink writes a batch: ``WritePathPolicy`` decides, ``WritePathCounts`` counts.

A sink has two ways to store a batch (see ``mdp_core.store.sinks``):

- **fast**: binary COPY straight into the partitioned table. Only for batches whose keys are
  all new: PostgreSQL refuses the whole batch (unique violation, SQLSTATE 23505) otherwise,
  and nothing of it is stored;
- **idempotent**: binary COPY into a TEMP stage, then ``INSERT ... ON CONFLICT DO NOTHING``
  (and the replace of ``partial`` bars). Any batch; it costs about 1.7 x the fast path.

A batch refused on the fast path is written again the idempotent way (a **fallback**). After
a conflict the policy keeps the sink on the idempotent path for a while (a replay or an
overlapping backfill conflicts batch after batch, and each fallback pays for two writes):
until ``hold_batches`` batches were written there or ``hold_seconds`` passed, whichever
comes first. When the first fast batch after a hold conflicts again, the next hold is twice
as long (up to ``max_hold_factor`` times); a fast batch that goes through resets it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Literal

import asyncpg

__all__ = ["WritePath", "WritePathCounts", "WritePathPolicy", "write_by_policy"]

#: How a committed batch went in: ``fast`` (direct COPY), ``fallback`` (refused on the fast
#: path for a conflict, then written the idempotent way) or ``idempotent`` (written the
#: idempotent way from the start, the policy holding the sink there).
WritePath = Literal["fast", "fallback", "idempotent"]


@dataclass(slots=True)
class WritePathCounts:
    """Committed batches and rows per write path (cumulative; shared by whoever reads it)."""

    fast_batches: int = 0
    fast_rows: int = 0
    fallback_batches: int = 0
    fallback_rows: int = 0
    idempotent_batches: int = 0
    idempotent_rows: int = 0

    def add(self, path: WritePath, rows: int) -> None:
        """Count one committed batch of ``rows`` rows that took ``path``."""
        if path == "fast":
            self.fast_batches += 1
            self.fast_rows += rows
        elif path == "fallback":
            self.fallback_batches += 1
            self.fallback_rows += rows
        else:
            self.idempotent_batches += 1
            self.idempotent_rows += rows

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class WritePathPolicy:
    """Decides per batch whether a sink tries the fast path (see the module docstring).

    ``start_idempotent`` starts with a hold (DLQ replay, backfills and imports, whose rows
    are often stored already). ``clock`` gives monotonic seconds (injectable for tests).
    A plain object without awaits: safe to share between the tasks of one event loop."""

    def __init__(
        self,
        hold_batches: int = 50,
        hold_seconds: float = 10.0,
        *,
        max_hold_factor: int = 16,
        start_idempotent: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if hold_batches < 0 or hold_seconds < 0 or max_hold_factor < 1:
            raise ValueError(
                f"hold_batches {hold_batches!r}, hold_seconds {hold_seconds!r} and "
                f"max_hold_factor {max_hold_factor!r} are invalid: expected hold_batches >= 0, "
                "hold_seconds >= 0, max_hold_factor >= 1"
            )
        self.hold_batches = hold_batches
        self.hold_seconds = hold_seconds
        self.max_hold_factor = max_hold_factor
        self._clock = clock
        self._factor = 1  # the current hold's multiple of hold_batches / hold_seconds
        self._batches_left = 0
        self._until = 0.0
        self._probing = False  # the hold ended: the next conflict doubles the next hold
        if start_idempotent:
            self._hold()

    @property
    def holding(self) -> bool:
        """True while batches go the idempotent way without trying the fast path."""
        return self._batches_left > 0 and self._clock() < self._until

    def use_fast(self) -> bool:
        """Whether the next batch tries the fast path; a False counts against the hold."""
        if self.holding:
            self._batches_left -= 1
            if self._batches_left == 0:
                self._probing = True
            return False
        if self._batches_left > 0:  # the hold's time ran out first
            self._batches_left = 0
            self._probing = True
        return True

    def fast_ok(self) -> None:
        """A batch went in on the fast path: the next hold is back to its base length."""
        self._factor = 1
        self._probing = False

    def conflict(self) -> None:
        """A batch was refused on the fast path for a conflict: hold the idempotent path."""
        if self._probing:
            self._factor = min(self._factor * 2, self.max_hold_factor)
            self._probing = False
        self._hold()

    def _hold(self) -> None:
        self._batches_left = self.hold_batches * self._factor
        self._until = self._clock() + self.hold_seconds * self._factor


async def write_by_policy(
    policy: WritePathPolicy,
    counts: WritePathCounts,
    rows: int,
    fast: Callable[[], Awaitable[None]],
    idempotent: Callable[[], Awaitable[int]],
) -> int:
    """Write a batch of ``rows`` rows the way ``policy`` picks; return how many were new.

    ``fast()`` stores them all in its own transaction or raises ``UniqueViolationError``
    having stored none; ``idempotent()`` stores what is missing and returns its count. On
    a conflict the batch is written again by ``idempotent()`` (a fallback) and the policy
    holds. The path taken is counted in ``counts`` once the batch is committed; any other
    error propagates with nothing counted."""
    path: WritePath = "idempotent"
    if policy.use_fast():
        try:
            await fast()
        except asyncpg.UniqueViolationError:
            policy.conflict()
            path = "fallback"
        else:
            policy.fast_ok()
            counts.add("fast", rows)
            return rows
    new = await idempotent()
    counts.add(path, rows)
    return new
