"""The Dagster names that ``mdp up`` and the code location share.

``mdp up`` talks to Dagster over HTTP and imports no Dagster module, so these live here, in
mdp_core, and ``mdp_dagster`` imports them from here: the code location's name (as
workspace.yaml spells it), the supervisor sensor's name, the run tags, the run statuses
that count as "still running", and where the instance configuration is.
"""

from __future__ import annotations

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "INSTANCE_CONFIG",
    "KIND_TAG",
    "LOCATION",
    "REPOSITORY",
    "STREAM_TAG",
    "SUPERVISOR_SENSOR",
    "WORKSPACE",
]

LOCATION = "mdp"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the name Dagster gives the repository of a Definitions
SUPERVISOR_SENSOR = "stream_supervisor"
STREAM_TAG = "mdp/stream"  # on each stream run: the stream's name (one run per value)
KIND_TAG = "mdp/kind"  # stream, rollup, health, retention, ...
#: Run statuses (DagsterRunStatus values) of a run that is not finished.
ACTIVE_RUN_STATUSES: tuple[str, ...] = (
    "QUEUED",
    "NOT_STARTED",
    "STARTING",
    "STARTED",
    "CANCELING",
)
#: Relative to the repository root: the code location, and the instance settings that
#: `mdp up` copies to DAGSTER_HOME (kept out of the root, where `dagster dev` would read it
#: even without DAGSTER_HOME and then need MDP_DAGSTER_PG_URL).
WORKSPACE = "workspace.yaml"
INSTANCE_CONFIG = "deploy/dagster/dagster.yaml"
