"""Helpers for the Dagster tests (queries against mdp's store, event filters)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import dagster as dg

from mdp_dagster.streaming import StreamRunConfig, stream_job


def run_stream(
    instance: dg.DagsterInstance, resources: dict[str, object], **config: Any
) -> dg.ExecuteInProcessResult:
    """One ``stream_job`` run in process (``config``: ``StreamRunConfig`` fields); a failed
    run is returned, not raised."""
    return stream_job.execute_in_process(
        run_config=dg.RunConfig(ops={"run_stream": StreamRunConfig(**config)}),
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def sql_value(dsn: str, sql: str, *args: Any) -> Any:
    """One value of one query on ``dsn``."""

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def materializations(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetMaterialization]:
    """Every AssetMaterialization the run stored in the instance's event log, in order
    (also those logged by an op that was interrupted afterwards)."""
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return [r.asset_materialization for r in records if r.asset_materialization is not None]


def observations(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetObservation]:
    """Every AssetObservation the run stored in the instance's event log, in order (a stream
    run's progress reports, also those logged by an op that was interrupted afterwards)."""
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION)
    return [r.asset_observation for r in records if r.asset_observation is not None]


def metadata_values(event: dg.AssetMaterialization | dg.AssetObservation) -> dict[str, Any]:
    """The event's metadata as plain values."""
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def run_log_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [r.user_message for r in instance.all_logs(run_id) if r.user_message]
