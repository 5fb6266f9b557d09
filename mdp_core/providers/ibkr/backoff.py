"""Reconnect delays: capped exponential backoff with jitter."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

__all__ = ["ReconnectBackoff"]


@dataclass(frozen=True, slots=True)
class ReconnectBackoff:
    """The delay before reconnect attempt ``n`` (1-based).

    ``cap(n) = min(max_backoff, initial_backoff * 2 ** (n - 1))`` and the delay is drawn
    from ``[cap / 2, cap]`` ("equal jitter"): never a burst of instant retries (a gateway
    restarting refuses connections for a minute or two), and clients that lost the same
    gateway do not come back in lockstep. ``rng`` is injectable for tests.
    """

    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.initial_backoff < math.inf):
            raise ValueError(
                f"reconnect initial_backoff {self.initial_backoff!r}: expected seconds > 0"
            )
        if not (self.initial_backoff <= self.max_backoff < math.inf):
            raise ValueError(
                f"reconnect max_backoff {self.max_backoff!r}: expected seconds >= "
                f"initial_backoff ({self.initial_backoff})"
            )

    def cap(self, attempt: int) -> float:
        """The largest delay before attempt ``attempt``."""
        exponent = min(max(attempt, 1) - 1, 64)
        return min(self.max_backoff, self.initial_backoff * 2.0**exponent)

    def delay(self, attempt: int) -> float:
        """A jittered delay in ``[cap(attempt) / 2, cap(attempt)]``."""
        cap = self.cap(attempt)
        return cap * (0.5 + 0.5 * self.rng.random())
