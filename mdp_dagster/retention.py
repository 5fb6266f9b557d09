"""Retention: the job ``mdp_retention`` and its daily schedule.

Drops the daily partitions of ``mdp.quotes`` and ``mdp.bars`` whose whole day is older than
``MDP_RETENTION_DAYS`` days, and the heartbeats older than that
(``Database.drop_partitions_older_than``: a partition is detached without blocking the
writers, then dropped). With ``MDP_RETENTION_DAYS`` unset the schedule skips: nothing is
ever deleted unless asked for. Rollup rows live in ``mdp.bars`` too, so they go with their
day.
"""

# No "from __future__ import annotations": Dagster reads the op's annotations at runtime.

import dagster as dg
from pydantic import Field

from mdp_core.dagster_names import KIND_TAG
from mdp_core.settings import get_settings
from mdp_dagster.resources import StoreResource

__all__ = ["RetentionConfig", "defs", "retention_job", "retention_schedule"]

RUN_TAGS = {KIND_TAG: "retention"}


class RetentionConfig(dg.Config):
    days: int = Field(ge=1, description="drop partitions and heartbeats older than this")


@dg.op(description="Drop the partitions of quotes and bars, and the heartbeats, older than "
       "the configured number of days.")  # fmt: skip
def drop_old_partitions(
    context: dg.OpExecutionContext, config: RetentionConfig, store: StoreResource
) -> None:
    dropped = store.run(lambda db: db.drop_partitions_older_than(config.days))
    context.log.info(
        f"retention ({config.days} days): dropped {len(dropped)} partitions"
        + (f": {', '.join(sorted(dropped))}" if dropped else "")
    )


@dg.job(name="mdp_retention", tags=RUN_TAGS, executor_def=dg.in_process_executor,
        description="Retention: drop what is older than MDP_RETENTION_DAYS.")  # fmt: skip
def retention_job() -> None:
    drop_old_partitions()


@dg.schedule(
    name="mdp_retention_schedule",
    job=retention_job,
    cron_schedule="30 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 00:30 UTC: retention, when MDP_RETENTION_DAYS is set.",
)
def retention_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    days = get_settings().retention_days
    if days is None:
        return dg.SkipReason("MDP_RETENTION_DAYS is not set: keeping every partition")
    tick = context.scheduled_execution_time
    return dg.RunRequest(
        run_key=f"retention-{tick:%Y%m%d}" if tick is not None else None,
        run_config=dg.RunConfig(ops={"drop_old_partitions": RetentionConfig(days=days)}),
    )


defs = dg.Definitions(jobs=[retention_job], schedules=[retention_schedule])
