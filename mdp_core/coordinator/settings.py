"""``CoordinatorSettings``: the sizing and behaviour of one ``WriteCoordinator`` (validated
on creation). ``mdp_core.settings.CoordinatorRuntimeSettings`` reads them from the
environment (``MDP_COORDINATOR_*``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mdp_core.settings import CoordinatorRuntimeSettings, QueueOverflow

__all__ = ["CoordinatorSettings"]


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    """Sizing and behaviour of a ``WriteCoordinator`` (validated on creation).

    ``on_high_watermark(depth, capacity)`` is called once when the queue depth reaches
    ``high_watermark * capacity``; ``on_low_watermark(depth, capacity)`` once when it falls
    back to ``low_watermark * capacity`` (then the high one can fire again). Callbacks run on
    the event loop and must not block; their exceptions are logged, never raised."""

    capacity: int = 20_000
    workers: int = 4
    batch_size: int = 500
    flush_interval: float = 0.25
    drain_timeout: float = 30.0
    overflow: QueueOverflow = "block"
    high_watermark: float = 0.8
    low_watermark: float = 0.5
    on_high_watermark: Callable[[int, int], object] | None = field(default=None, compare=False)
    on_low_watermark: Callable[[int, int], object] | None = field(default=None, compare=False)
    circuit_failure_threshold: int = 5
    circuit_reset_timeout: float = 0.5

    @classmethod
    def from_env(
        cls, runtime: CoordinatorRuntimeSettings | None = None, **overrides: Any
    ) -> CoordinatorSettings:
        """The settings of ``runtime`` (default: read from ``MDP_COORDINATOR_*`` now), with
        ``overrides`` (callbacks and such) on top."""
        values = (runtime or CoordinatorRuntimeSettings()).values()
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CoordinatorSettings.{name} {value!r}: expected an int >= 1")

        positive_int("capacity", self.capacity)
        positive_int("workers", self.workers)
        positive_int("batch_size", self.batch_size)
        positive_int("circuit_failure_threshold", self.circuit_failure_threshold)
        for name in ("flush_interval", "drain_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"CoordinatorSettings.{name} {getattr(self, name)!r}: expected seconds >= 0"
                )
        if not self.circuit_reset_timeout > 0:
            raise ValueError(
                f"CoordinatorSettings.circuit_reset_timeout {self.circuit_reset_timeout!r}: "
                "expected seconds > 0"
            )
        if self.overflow not in ("block", "drop_oldest", "error"):
            raise ValueError(
                f"CoordinatorSettings.overflow {self.overflow!r}: "
                "expected 'block', 'drop_oldest' or 'error'"
            )
        if not 0 < self.low_watermark < self.high_watermark <= 1:
            raise ValueError(
                f"CoordinatorSettings watermarks low={self.low_watermark!r} "
                f"high={self.high_watermark!r}: expected 0 < low < high <= 1"
            )
