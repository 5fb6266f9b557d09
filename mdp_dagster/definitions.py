"""The code location: the one place that lists everything Dagster loads.

``dagster dev -w workspace.yaml`` (what ``mdp up`` / ``make run`` runs) loads ``defs``.
Resources are bound here, once, for every part: ``store`` (mdp's PostgreSQL, from
``$MDP_PG_DSN`` at run time), ``dlq`` (the dead-letter spool under ``$MDP_HOME``), ``export``
(where the Parquet export writes) and ``mdp_io_manager`` (loads mdp's tables as inputs).
"""

from __future__ import annotations

import dagster as dg

from mdp_core.logs import configure_logging
from mdp_dagster import dlq, export, health, history, rollups, streaming
from mdp_dagster.export import ExportResource
from mdp_dagster.io_manager import IO_MANAGER_KEY, MdpIOManager
from mdp_dagster.resources import DlqResource, StoreResource

__all__ = ["defs"]

# The code server and every run worker import this module: mdp's log lines go to stderr at
# MDP_LOG_LEVEL (stream runs also forward them to the run's log in the UI).
configure_logging()

RESOURCES: dict[str, object] = {
    "store": StoreResource(),
    "dlq": DlqResource(),
    "export": ExportResource(),
    IO_MANAGER_KEY: MdpIOManager(),
}

defs = dg.Definitions.merge(
    streaming.defs,
    rollups.defs,
    export.defs,
    health.defs,
    dlq.defs,
    history.defs,
    dg.Definitions(resources=RESOURCES),
)
