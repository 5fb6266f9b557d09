"""The code location: the one place that lists everything Dagster loads.

``dagster dev -w workspace.yaml`` (what ``mdp up`` / ``make run`` runs) loads ``defs``.
Resources are bound here, once, for every part: ``store`` (mdp's PostgreSQL, from
``$MDP_PG_DSN`` at run time) and ``dlq`` (the dead-letter spool under ``$MDP_HOME``).
"""

from __future__ import annotations

import dagster as dg

from mdp_core.logs import configure_logging
from mdp_dagster import dlq, health, history, rollups, streaming
from mdp_dagster.resources import DlqResource, StoreResource

__all__ = ["defs"]

# The code server and every run worker import this module: mdp's log lines go to stderr at
# MDP_LOG_LEVEL (stream runs also forward them to the run's log in the UI).
configure_logging()

RESOURCES: dict[str, object] = {"store": StoreResource(), "dlq": DlqResource()}

defs = dg.Definitions.merge(
    streaming.defs,
    rollups.defs,
    health.defs,
    dlq.defs,
    history.defs,
    dg.Definitions(resources=RESOURCES),
)
