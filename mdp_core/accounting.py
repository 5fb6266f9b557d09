"""A stream's accounting: ``PipelineStats``, the snapshot of one ``Pipeline``.

Every record a provider hands over is counted as received at its edge and leaves by exactly
one way: committed (in PostgreSQL), dead-lettered (in the fsynced spool) or dropped by a
named policy. ``balanced`` says ``received == committed + dead_lettered + sum(dropped)``
with nothing pending. The CLI summary, the heartbeats, Dagster's metadata and the
Prometheus metrics all read these counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from mdp_core.channel import ChannelStats
from mdp_core.coordinator import CoordinatorStats

__all__ = ["PipelineState", "PipelineStats"]

PipelineState = Literal["new", "running", "draining", "finished", "failed"]


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """A snapshot of a running (or finished) pipeline, with its accounting from the edge:
    ``received == committed + dead_lettered + sum(dropped.values())`` once drained."""

    stream: str
    run_id: str
    state: PipelineState
    started_at: datetime | None
    elapsed: float
    received: int  # records the provider handed over, counted at the edge
    dropped: dict[str, int]  # received records that left by a named policy -> how many
    channel: ChannelStats
    coordinator: CoordinatorStats
    rate: float  # records committed per second, recently
    error: str | None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def pending(self) -> int:
        """Received records not yet committed, dead-lettered or dropped (in a buffer, in
        flight, or unpersisted because the spool failed)."""
        h = self.coordinator
        return self.received - h.committed - h.dead_lettered - self.dropped_total

    @property
    def balanced(self) -> bool:
        """True once drained: received == committed + dead-lettered + dropped, with
        nothing left pending or unpersisted."""
        return self.pending == 0 and self.coordinator.unpersisted == 0

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready counters (heartbeats, Dagster metadata, the CLI summary)."""
        h = self.coordinator
        return {
            "state": self.state,
            "elapsed_s": round(self.elapsed, 3),
            "received": self.received,
            "committed": h.committed,
            "new_rows": h.new_rows,
            "dead_lettered": h.dead_lettered,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": self.dropped_total,
            "pending": self.pending,
            "unpersisted": h.unpersisted,
            "balanced": self.balanced,
            "submitted": h.submitted,
            "channel_depth": self.channel.depth,
            "queue_depth": h.queue_depth,
            "in_flight": h.in_flight,
            "retries": h.retries,
            "write_paths": dict(h.write_paths),
            "circuit": h.circuit,
            "rate": round(self.rate, 1),
            "error": self.error,
        }

    def summary(self) -> str:
        """One line: the accounting, and whether it balances."""
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(self.dropped.items()) if v)
        h = self.coordinator
        tail = "balanced" if self.balanced else f"NOT BALANCED: {self.pending:,} pending"
        if h.unpersisted:
            tail += f", {h.unpersisted:,} could not be spooled"
        return (
            f"received {self.received:,} = committed {h.committed:,} + dead-lettered "
            f"{h.dead_lettered:,} + dropped {self.dropped_total:,}"
            + (f" ({drops})" if drops else "")
            + f" [{tail}]"
        )
