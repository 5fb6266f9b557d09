"""The code location of an extra stream shard: its streams and its dead-letter spool only.

A deployment that runs streams on more than one machine without a per-run launcher (see
README, "Scaling past one machine") has one code server per machine, each with its own
``MDP_HOME`` and streams file. One of them serves ``mdp_dagster.definitions`` (everything:
streams, rollups, checks, export, history); every other one serves this module::

    dagster code-server start -m mdp_dagster.shard -h 127.0.0.1 -p 4001 --location-name mdp_2

It holds the stream job and its supervisor (which looks only at the runs of its own code
location), and the DLQ replay job, sensor and schedule (the spool is a local directory of
the machine whose streams wrote it). The rollups and other assets are not repeated here:
two code locations defining one asset would both materialize it.
"""

from __future__ import annotations

import dagster as dg

from mdp_dagster import dlq, streaming
from mdp_dagster.definitions import RESOURCES

__all__ = ["defs"]

defs = dg.Definitions.merge(streaming.defs, dlq.defs, dg.Definitions(resources=RESOURCES))
