"""``CoordinatorStats``: a snapshot of a ``WriteCoordinator`` (``stats()``), and the pieces
it is computed from (``CommitRate``, ``write_path_counts``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from mdp_core.circuit import CircuitState

__all__ = ["CommitRate", "CoordinatorState", "CoordinatorStats", "write_path_counts"]

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
    # committed batches and rows per write path of the sink ("fast_batches", "fast_rows",
    # "fallback_batches", ...: ``WritePathCounts``); empty for a sink that does not say
    write_paths: dict[str, int] = field(default_factory=dict)

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


def write_path_counts(sink: object) -> dict[str, int]:
    """The sink's committed batches and rows per write path (its ``paths``, a
    ``WritePathCounts``), or ``{}`` for a sink without them."""
    paths = getattr(sink, "paths", None)
    return paths.to_dict() if paths is not None else {}


class CommitRate:
    """Items committed per second over the last ``window`` seconds of ``clock``."""

    def __init__(self, clock: Callable[[], float], window: float = 5.0) -> None:
        self._clock = clock
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def start(self) -> None:
        """Start counting from zero committed items, now."""
        self._samples.append((self._clock(), 0))

    def note(self, committed: int) -> None:
        """Record the running total of committed items, now."""
        self._samples.append((self._clock(), committed))
        self._prune()

    def rate(self, committed: int) -> float:
        """Items per second over the window, ``committed`` being the running total now."""
        self._prune()
        if not self._samples:
            return 0.0
        now = self._clock()
        t0, c0 = self._samples[0]
        t0 = max(t0, now - self.window)  # no commit between the sample and t0
        span = now - t0
        return (committed - c0) / span if span > 0 else 0.0

    def _prune(self) -> None:
        """Keep the samples of the window, plus the last one before it."""
        samples = self._samples
        cutoff = self._clock() - self.window
        while len(samples) > 1 and samples[1][0] <= cutoff:
            samples.popleft()
