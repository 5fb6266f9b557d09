"""The write coordinator: a bounded queue, N supervised workers, batches into a sink, losing
nothing (``WriteCoordinator``; see ``mdp_core.coordinator.coordinator`` for its guarantees).

- ``coordinator.py``: ``WriteCoordinator`` (lifecycle, workers, retries, accounting);
- ``queue.py``: ``WorkQueue``, the bounded queue between producers and workers;
- ``spooler.py``: ``Spooler``, dead-lettering, and ``SpoolError`` when even that fails;
- ``settings.py``: ``CoordinatorSettings``; ``stats.py``: ``CoordinatorStats``.

``RetryPolicy`` lives in ``mdp_core.retry``, the ``Sink`` protocol in ``mdp_core.sink``,
and the bisection of a failing batch in ``mdp_core.bisection``; they are importable from
here too.
"""

from __future__ import annotations

from mdp_core.coordinator.coordinator import WriteCoordinator
from mdp_core.coordinator.queue import CoordinatorClosedError, QueueFullError
from mdp_core.coordinator.settings import CoordinatorSettings
from mdp_core.coordinator.spooler import SpoolError
from mdp_core.coordinator.stats import CoordinatorState, CoordinatorStats
from mdp_core.retry import RetryPolicy
from mdp_core.settings import CoordinatorRuntimeSettings
from mdp_core.sink import Sink

__all__ = [
    "CoordinatorClosedError",
    "CoordinatorRuntimeSettings",
    "CoordinatorSettings",
    "CoordinatorState",
    "CoordinatorStats",
    "QueueFullError",
    "RetryPolicy",
    "Sink",
    "SpoolError",
    "WriteCoordinator",
]
