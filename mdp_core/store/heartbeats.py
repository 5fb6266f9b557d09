"""Stream heartbeats (``mdp.stream_heartbeats``): the one place they are written, read and
judged.

A running pipeline writes a row every ``HeartbeatPolicy.interval`` seconds with its
counters. The Dagster supervisor reads the last one of each run (to replace a run whose
worker died) and the health asset the last one of each stream (to show it); both judge
staleness by ``HeartbeatPolicy.is_stale``. Retention (``Database.drop_partitions_older_than``)
deletes old rows with ``prune_heartbeats``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = [
    "Heartbeat",
    "HeartbeatPolicy",
    "last_heartbeats",
    "latest_heartbeats",
    "prune_heartbeats",
    "stream_state",
    "write_heartbeat",
]


class _HasPool(Protocol):
    """What these functions need of a ``Database``: its asyncpg pool."""

    @property
    def pool(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class HeartbeatPolicy:
    """How often a stream run writes a heartbeat, and when its silence means it is dead."""

    interval: float = 15.0  # seconds between heartbeats (what stream runs are configured with)
    stale_factor: float = 3.0  # stale after this many missed heartbeats
    start_grace: float = 120.0  # extra time before a new run's first heartbeat is due

    @property
    def stale_after(self) -> float:
        return self.stale_factor * self.interval

    def is_stale(self, last: float | None, since: float, now: float) -> bool:
        """Whether a run whose last heartbeat was at ``last`` (epoch s; ``None``: none yet,
        the run started at ``since``) is stale at ``now``: the last heartbeat is older
        than ``stale_after``, or, before the first one, the start is older than
        ``stale_after + start_grace``."""
        if last is not None:
            return now - last > self.stale_after
        return now - since > self.stale_after + self.start_grace


@dataclass(frozen=True, slots=True)
class Heartbeat:
    run_id: str
    ts: datetime
    counters: dict[str, Any]


_WRITE = (
    "INSERT INTO mdp.stream_heartbeats (stream, run_id, ts, counters) "
    "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING"
)
_LAST_BY_RUN = (
    "SELECT run_id, extract(epoch FROM max(ts))::float8 AS ts FROM mdp.stream_heartbeats "
    "WHERE run_id = ANY($1::text[]) GROUP BY run_id"
)
_PRUNE = "DELETE FROM mdp.stream_heartbeats WHERE ts < $1"
_LATEST_BY_STREAM = """
SELECT DISTINCT ON (stream) stream, run_id, ts, counters
FROM mdp.stream_heartbeats
WHERE stream = ANY($1::text[])
ORDER BY stream, ts DESC
"""


async def write_heartbeat(
    db: _HasPool,
    stream: str,
    run_id: str,
    counters: Mapping[str, Any],
    *,
    ts: datetime | None = None,
) -> None:
    """Record that ``stream`` (run ``run_id``) is alive, with its counters (a JSON object)."""
    await db.pool.execute(
        _WRITE, stream, run_id, ts or datetime.now(UTC), json.dumps(dict(counters))
    )


async def last_heartbeats(db: _HasPool, run_ids: Sequence[str]) -> dict[str, float]:
    """Epoch of the last heartbeat of each of ``run_ids`` that has one (one indexed query)."""
    if not run_ids:
        return {}
    rows = await db.pool.fetch(_LAST_BY_RUN, list(run_ids))
    return {row["run_id"]: float(row["ts"]) for row in rows}


async def latest_heartbeats(db: _HasPool, streams: Sequence[str]) -> dict[str, Heartbeat]:
    """The newest heartbeat of each of ``streams`` that has one."""
    rows = await db.pool.fetch(_LATEST_BY_STREAM, list(streams))
    out: dict[str, Heartbeat] = {}
    for r in rows:
        counters = r["counters"]
        counters = json.loads(counters) if isinstance(counters, str) else dict(counters)
        out[r["stream"]] = Heartbeat(r["run_id"], r["ts"], counters)
    return out


async def prune_heartbeats(conn: Any, before: datetime) -> None:
    """Delete the heartbeats older than ``before`` (``conn``: an asyncpg connection or pool)."""
    await conn.execute(_PRUNE, before)


def stream_state(heartbeat: Heartbeat | None, now: datetime, policy: HeartbeatPolicy) -> str:
    """``running`` (fresh heartbeat of a live pipeline), ``stale`` (a live pipeline's last
    heartbeat is stale by ``policy``) or ``stopped`` (none, or the pipeline ended)."""
    if heartbeat is None or heartbeat.counters.get("state") in ("finished", "failed"):
        return "stopped"
    last = heartbeat.ts.timestamp()
    return "stale" if policy.is_stale(last, last, now.timestamp()) else "running"
