"""``CoordinatorStats``: a snapshot of a ``WriteCoordinator`` (``stats()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from mdp_core.circuit import CircuitState

__all__ = ["CoordinatorState", "CoordinatorStats"]

# "starting": not started yet
CoordinatorState = Literal["starting", "running", "draining", "stopped"]


@dataclass(frozen=True, slots=True)
class CoordinatorStats:
    """A snapshot of a coordinator (``WriteCoordinator.stats()``)."""

    name: str
    state: CoordinatorState
    queue_depth: int
    capacity: int
    in_flight: int
    submitted: int
    committed: int
    new_rows: int
    duplicates_ignored: int
    dead_lettered: int
    dropped: int
    unpersisted: int  # neither committed nor spooled: the spool failed (see SpoolError)
    retries: int
    circuit: CircuitState
    circuit_opened: int
    workers: int
    workers_alive: int
    worker_restarts: int
    blocked_producers: int
    throughput: float  # items committed per second, over the last few seconds
    high_watermark: bool
    last_error: str | None
    last_error_at: datetime | None

    @property
    def pending(self) -> int:
        """Items neither committed, dead-lettered nor dropped yet (``unpersisted`` ones
        included)."""
        return self.submitted - self.committed - self.dead_lettered - self.dropped

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_error_at"] = self.last_error_at.isoformat() if self.last_error_at else None
        data["pending"] = self.pending
        return data
