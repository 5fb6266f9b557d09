"""The soak's fault schedule: which faults happen when, drawn from a seed.

``plan_faults(seed, duration, counts)`` places each fault at a random time in the fault
window ``[warmup, duration - cooldown]`` with random parameters (how long a gateway stays
down, how long the database is stalled, how many poison rows, ...). The same seed and
arguments give the same schedule.

Faults run in lanes (``LANES``): gateway faults, database faults, SIGTERMs and poison.
Within a lane a fault starts at its time or when the previous one has recovered, whichever
is later; with ``overlap`` the lanes run side by side (a SIGTERM may land during a database
outage, a gateway restart during a stall), else everything runs in one lane. The schedule
is reproducible; the times the faults actually ran at are reported apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_RATES",
    "FAULT_KINDS",
    "LANES",
    "Fault",
    "default_counts",
    "parse_fault_counts",
    "plan_faults",
]

#: What each fault does (see ``soak_faults.FaultInjector`` for the code).
FAULT_KINDS: dict[str, str] = {
    "gateway_restart": "nightly-style IB Gateway restart: sockets dropped, connections "
    "refused for `down` s, then listening again",
    "lost_1101": "1100 connectivity lost (data paused) for `down` s, then 1101 restored "
    "with data lost (subscriptions dropped: clients must resubscribe)",
    "lost_1102": "1100 connectivity lost (data paused) for `down` s, then 1102 restored "
    "with data maintained (subscriptions kept)",
    "farm_blip": "2103 market-data farm broken (data paused) for `down` s, then 2104 OK",
    "db_restart": "PostgreSQL stopped in immediate mode (a crash), started `down` s later",
    "db_stall": "every PostgreSQL process SIGSTOPped for `down` s, then SIGCONTed",
    "poison": "`rows` records violating the schema's CHECKs pushed into each in-process "
    "stream (they must be dead-lettered)",
    "sigterm": "SIGTERM to each `mdp stream` subprocess (it drains and exits), restarted "
    "`down` s later",
    "db_freeze_sigterm": "every PostgreSQL process SIGSTOPped for `down` s; a third of the "
    "way in, SIGTERM to the `mdp stream` quotes subprocess (a small channel and queue, a "
    "short drain budget: it conflates, then spills to the DLQ); thawed, then restarted",
}

#: Faults of one lane run one after the other; lanes run side by side (``--overlap``).
LANES: dict[str, str] = {
    "gateway_restart": "gateway",
    "lost_1101": "gateway",
    "lost_1102": "gateway",
    "farm_blip": "gateway",
    "db_restart": "database",
    "db_stall": "database",
    "sigterm": "process",
    "db_freeze_sigterm": "database",
    "poison": "data",
}

#: Faults per 10 minutes of soak in the default schedule (at least one of each kind).
DEFAULT_RATES: dict[str, float] = {
    "gateway_restart": 1.0,
    "lost_1101": 1.5,
    "lost_1102": 1.0,
    "farm_blip": 1.5,
    "db_restart": 1.0,
    "db_stall": 1.0,
    "poison": 3.0,
    "sigterm": 1.0,
    "db_freeze_sigterm": 1.0,
}

# Parameter ranges (real seconds, or rows), drawn uniformly per fault.
_DOWN: dict[str, tuple[float, float]] = {
    "gateway_restart": (2.0, 10.0),
    "lost_1101": (1.0, 6.0),
    "lost_1102": (1.0, 6.0),
    "farm_blip": (1.0, 4.0),
    "db_restart": (2.0, 6.0),
    "db_stall": (2.0, 8.0),
    "sigterm": (0.5, 3.0),
    "db_freeze_sigterm": (10.0, 20.0),
}
_POISON_ROWS = (1, 5)


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault: ``at`` seconds after the soak started, of ``kind``, with
    ``params`` (``down``: seconds, ``rows``: poison rows per stream)."""

    at: float
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params.items())


def default_counts(minutes: float) -> dict[str, int]:
    """How many faults of each kind the default schedule has for a soak of ``minutes``."""
    return {kind: max(1, round(rate * minutes / 10.0)) for kind, rate in DEFAULT_RATES.items()}


def parse_fault_counts(text: str) -> dict[str, int]:
    """``"gateway_restart=1,poison=2"`` -> counts; kinds not named get 0.

    Raises ``ValueError`` naming the bad entry and the known kinds."""
    counts = dict.fromkeys(FAULT_KINDS, 0)
    for raw in text.split(","):
        if not raw.strip():
            continue
        kind, sep, value = raw.partition("=")
        kind = kind.strip()
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {kind!r} in {text!r}: expected one of {', '.join(FAULT_KINDS)}"
            )
        try:
            n = int(value) if sep else 1
        except ValueError:
            n = -1
        if n < 0:
            raise ValueError(f"invalid count in {raw.strip()!r}: expected KIND=N with N >= 0")
        counts[kind] = n
    return counts


def plan_faults(
    seed: int,
    duration: float,
    counts: dict[str, int],
    *,
    warmup: float = 5.0,
    cooldown: float = 10.0,
) -> list[Fault]:
    """The faults in time order, reproducible from ``seed``.

    Each is placed uniformly in ``[warmup, duration - cooldown]`` (a window of at least one
    second). Raises ``ValueError`` for an unknown kind or a negative count."""
    unknown = set(counts) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(
            f"unknown fault kind(s) {sorted(unknown)}: expected {', '.join(FAULT_KINDS)}"
        )
    rng = random.Random(seed)
    start = min(warmup, max(0.0, duration - cooldown - 1.0))
    end = max(start + 1.0, duration - cooldown)
    faults: list[Fault] = []
    for kind in FAULT_KINDS:  # fixed order: the draws do not depend on dict order
        n = counts.get(kind, 0)
        if n < 0:
            raise ValueError(f"fault count for {kind} is {n}: expected >= 0")
        for _ in range(n):
            at = round(rng.uniform(start, end), 2)
            if kind == "poison":
                params: dict[str, Any] = {"rows": rng.randint(*_POISON_ROWS)}
            else:
                low, high = _DOWN[kind]
                params = {"down": round(rng.uniform(low, high), 2)}
            faults.append(Fault(at, kind, params))
    faults.sort(key=lambda f: (f.at, f.kind))
    return faults
