"""The code location: the one place that lists everything Dagster loads.

``dagster dev -w workspace.yaml`` (what ``mdp up`` / ``make run`` runs) loads ``defs``. Each
feature module builds its own definitions; the resources are bound here, once (see
``resources.py``): ``store`` (mdp's PostgreSQL), ``dlq`` (the dead-letter spool), ``export``
(where the Parquet export writes) and ``mdp_io_manager`` (mdp's tables as inputs).
"""

from __future__ import annotations

import dagster as dg

from mdp_core.logs import configure_logging
from mdp_dagster import dlq, export, retention, streaming
from mdp_dagster.export import ExportResource
from mdp_dagster.health import build_health_defs
from mdp_dagster.history import build_history_defs
from mdp_dagster.io_manager import IO_MANAGER_KEY, MdpIOManager
from mdp_dagster.resources import DlqResource, pg_dsn_config, store_resource
from mdp_dagster.rollups import build_rollup_defs

__all__ = ["RESOURCES", "defs"]

RESOURCES: dict[str, object] = {
    "store": store_resource(),
    "dlq": DlqResource(),
    "export": ExportResource(),
    IO_MANAGER_KEY: MdpIOManager(pg_dsn=pg_dsn_config()),
}

# The code server and every run worker import this module: mdp's log lines go to stderr at
# MDP_LOG_LEVEL (stream runs also forward them to the run's log in the UI).
configure_logging()

defs = dg.Definitions.merge(
    streaming.defs,
    build_rollup_defs(),
    export.defs,
    build_health_defs(),
    dlq.defs,
    build_history_defs(),
    retention.defs,
    dg.Definitions(resources=RESOURCES),
)
