"""``RetryPolicy``: how a failing operation is retried (exponential backoff with jitter, a
budget), and which errors are worth retrying (``classification``).

Used by the write coordinator (batches), the IBKR source (reconnects), the pipeline (its
lock watcher) and DLQ replay.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mdp_core.errors import Classification, classify_error

__all__ = ["Jitter", "RetryPolicy"]

Jitter = Literal["full", "equal", "none"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient (infrastructure) failures are retried.

    The delay after the n-th failed attempt is drawn from ``[0, cap(n)]`` with
    ``cap(n) = min(max_backoff, initial_backoff * multiplier ** (n - 1))`` ("full" jitter;
    "equal" draws from ``[cap/2, cap]``, "none" waits ``cap``). ``classify(exc)`` returns
    ``"transient"`` or ``"permanent"`` (default ``mdp_core.errors.classify_error``).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: Jitter = "full"
    classify: Callable[[BaseException], Classification] | None = None
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts {self.max_attempts!r}: expected int >= 1")
        if not self.initial_backoff >= 0:
            raise ValueError(
                f"RetryPolicy.initial_backoff {self.initial_backoff!r}: expected seconds >= 0"
            )
        if not self.max_backoff >= self.initial_backoff:
            raise ValueError(
                f"RetryPolicy.max_backoff {self.max_backoff!r}: expected >= initial_backoff"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"RetryPolicy.multiplier {self.multiplier!r}: expected >= 1")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(
                f"RetryPolicy.jitter {self.jitter!r}: expected 'full', 'equal' or 'none'"
            )

    def cap(self, attempt: int) -> float:
        """The largest delay after ``attempt`` failed attempts (1-based)."""
        exponent = min(attempt - 1, 1000)
        try:
            return min(self.max_backoff, self.initial_backoff * self.multiplier**exponent)
        except OverflowError:
            return self.max_backoff

    def backoff(self, attempt: int) -> float:
        """The delay to wait after ``attempt`` failed attempts."""
        cap = self.cap(attempt)
        rng = self.rng or random
        if self.jitter == "full":
            return rng.uniform(0.0, cap)
        if self.jitter == "equal":
            return rng.uniform(cap / 2, cap)
        return cap

    @property
    def budget(self) -> float:
        """The longest the retries of one batch can take: the sum of the delay caps."""
        return sum(self.cap(n) for n in range(1, self.max_attempts))

    def classification(self, exc: BaseException) -> Classification:
        """``classify(exc)``; anything but "transient" counts as "permanent"."""
        kind = (self.classify or classify_error)(exc)
        return "transient" if kind == "transient" else "permanent"
