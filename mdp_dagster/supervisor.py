"""What the stream supervisor decides, as plain functions (no Dagster context needed).

For each enabled stream the supervisor sensor looks at the stream's runs (newest first) and
the age of each STARTED run's last heartbeat, and ``decide`` says whether to launch a run,
which runs to terminate, and why:

- an active run (queued, starting, started or cancelling) with a fresh heartbeat: nothing;
- a STARTED run whose heartbeats are stale (``HeartbeatPolicy.is_stale`` in
  ``mdp_core.store.heartbeats``, the rule the health asset uses too): terminate it and
  launch a replacement;
- no active run, the last run did not fail (first start, cancelled, rotated after
  ``max_seconds``): launch now;
- no active run, the last ``n`` runs failed: launch once ``backoff_delay(n)`` seconds have
  passed since the last failure ended (15 s, 30 s, 60 s ... up to 10 min by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mdp_core.dagster_names import ACTIVE_RUN_STATUSES
from mdp_core.store.heartbeats import HeartbeatPolicy

__all__ = [
    "ACTIVE",
    "Decision",
    "RunView",
    "SupervisorPolicy",
    "backoff_delay",
    "consecutive_failures",
    "decide",
]

# Run statuses (DagsterRunStatus values) that count as "the stream has a run".
ACTIVE: frozenset[str] = frozenset(ACTIVE_RUN_STATUSES)
FAILED = "FAILURE"
STARTED = "STARTED"


@dataclass(frozen=True, slots=True)
class SupervisorPolicy:
    """Timings of the supervisor (seconds); staleness is ``heartbeat``'s rule, the one the
    health asset uses too."""

    heartbeat: HeartbeatPolicy = field(default_factory=HeartbeatPolicy)
    backoff_initial: float = 15.0
    backoff_max: float = 600.0
    history: int = 10  # runs looked at to count consecutive failures

    @property
    def stale_after(self) -> float:
        return self.heartbeat.stale_after


@dataclass(frozen=True, slots=True)
class RunView:
    """What the supervisor needs of one run (times are epoch seconds)."""

    run_id: str
    status: str  # a DagsterRunStatus value, e.g. "STARTED"
    created: float
    started: float | None = None
    ended: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    stream: str
    launch: bool
    reason: str
    terminate: tuple[str, ...] = ()  # run ids to terminate (stale)


def backoff_delay(failures: int, initial: float = 15.0, maximum: float = 600.0) -> float:
    """Seconds to wait before relaunching after ``failures`` consecutive failures:
    0 for none, then ``initial`` doubling per failure, never more than ``maximum``."""
    if failures <= 0:
        return 0.0
    return float(min(maximum, initial * 2.0 ** min(failures - 1, 30)))


def consecutive_failures(runs: Sequence[RunView]) -> int:
    """How many of the newest finished runs (newest first) failed in a row."""
    count = 0
    for run in runs:
        if run.status in ACTIVE:
            continue
        if run.status != FAILED:
            break
        count += 1
    return count


def _stale_age(run: RunView, last_heartbeat: float | None, now: float, p: SupervisorPolicy) -> bool:
    since = run.started if run.started is not None else run.created
    return p.heartbeat.is_stale(last_heartbeat, since, now)


def decide(
    stream: str,
    runs: Sequence[RunView],
    heartbeats: Mapping[str, float] | None,
    now: float,
    policy: SupervisorPolicy | None = None,
) -> Decision:
    """The supervisor's decision for ``stream``.

    ``runs`` are the stream's recent runs, newest first; ``heartbeats`` maps run id -> epoch
    of its last heartbeat (``None`` when they could not be read: then nothing is judged
    stale); ``now`` is the current epoch time."""
    p = policy or SupervisorPolicy()
    active = [r for r in runs if r.status in ACTIVE]
    if active:
        stale: list[str] = []
        if heartbeats is not None:
            stale = [
                r.run_id
                for r in active
                if r.status == STARTED and _stale_age(r, heartbeats.get(r.run_id), now, p)
            ]
        if len(stale) < len(active):
            return Decision(stream, False, "has an active run", ())
        return Decision(
            stream,
            True,
            f"heartbeat of run {', '.join(stale)} older than {p.stale_after:.0f}s: replacing it",
            tuple(stale),
        )
    failures = consecutive_failures(runs)
    if failures == 0:
        reason = "no run yet" if not runs else f"last run {runs[0].status.lower()}"
        return Decision(stream, True, reason)
    last = runs[0]
    ended = last.ended if last.ended is not None else (last.started or last.created)
    delay = backoff_delay(failures, p.backoff_initial, p.backoff_max)
    if now - ended >= delay:
        return Decision(stream, True, f"relaunching after {failures} failed run(s)")
    return Decision(
        stream,
        False,
        f"{failures} failed run(s): backing off, next attempt in {delay - (now - ended):.0f}s",
    )
