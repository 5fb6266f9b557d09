"""DLQ replay: the ``dlq_replay`` job, its schedule and its sensor.

The job writes the dead-lettered records back through the sinks (``DeadLetterQueue.replay``):
records that commit leave the spool, those still failing stay (with one more attempt), and
records that failed for a data reason in ``max_attempts`` replays move to the quarantine.
The counts are the op's output metadata and its log.

- ``dlq_replay_schedule`` (every 15 minutes, RUNNING): retries whatever is in the spool.
- ``dlq_nonempty`` (RUNNING, every minute): requests a replay as soon as new records are
  spooled: once per new spool content (its cursor and run key are a fingerprint of the
  record ids), so records that keep failing are left to the schedule instead of being
  retried every minute.
Neither requests a run while a replay run is queued or in progress (and a second replay
would find the spool's replay lock taken and do nothing).
"""

import hashlib

import dagster as dg
from dagster import OpExecutionContext

from mdp_core.dagster_names import KIND_TAG
from mdp_core.dlq import DeadLetterQueue, ReplayBusyError, ReplayResult
from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink, QuotesSink
from mdp_core.store.write_path import WritePathPolicy
from mdp_dagster.resources import DlqResource, StoreResource
from mdp_dagster.streaming import ACTIVE_STATUSES

__all__ = [
    "DlqReplayConfig",
    "defs",
    "dlq_nonempty",
    "dlq_replay",
    "dlq_replay_schedule",
    "spool_fingerprint",
]

JOB_NAME = "dlq_replay"
RUN_TAGS = {KIND_TAG: "dlq"}
CRON = "*/15 * * * *"


class DlqReplayConfig(dg.Config):
    max_attempts: int = 3
    """Replays a record may fail for a data reason before it is quarantined."""
    batch_size: int = 500
    """Records written per transaction."""


@dg.op(
    description="Write the dead-lettered records back to PostgreSQL; report replayed, still "
    "failing and quarantined counts.",
)
def replay_dlq(
    context: OpExecutionContext,
    config: DlqReplayConfig,
    store: StoreResource,
    dlq: DlqResource,
) -> dg.Output[dict[str, int]]:
    queue = dlq.queue()
    pending = queue.count()
    busy = False
    if pending == 0:
        result = ReplayResult()
        context.log.info(f"the DLQ in {queue.directory} is empty: nothing to replay")
    else:
        context.log.info(f"replaying {pending} records from the DLQ in {queue.directory}")

        async def work(db: Database) -> ReplayResult:
            return await queue.replay(
                # replayed records are often stored already: start idempotent
                [
                    QuotesSink(db, WritePathPolicy(start_idempotent=True)),
                    BarsSink(db, WritePathPolicy(start_idempotent=True)),
                ],
                max_attempts=config.max_attempts,
                batch_size=config.batch_size,
            )

        try:
            result = store.run(work)
        except ReplayBusyError as exc:
            busy, result = True, ReplayResult()
            context.log.warning(f"{exc}: skipping this replay")
    summary = {
        "pending_before": pending,
        "replayed": result.replayed,
        "new_rows": result.new_rows,
        "still_failing": result.still_failing,
        "quarantined": result.quarantined,
        "skipped": result.skipped,
        "pending_after": queue.count(),
        "quarantine_total": queue.count(quarantined=True),
    }
    context.log.info(
        f"DLQ replay: {result.replayed} replayed ({result.new_rows} new rows), "
        f"{result.still_failing} still failing, {result.quarantined} quarantined"
        + (f"; errors: {result.errors}" if result.errors else "")
    )
    metadata: dict[str, dg.RawMetadataValue] = dict(summary)
    metadata["busy"] = busy
    metadata["errors"] = dg.MetadataValue.json(result.errors)
    metadata["directory"] = str(queue.directory)
    return dg.Output(summary, metadata=metadata)


@dg.job(
    name=JOB_NAME,
    executor_def=dg.in_process_executor,
    tags=RUN_TAGS,
    description="Replay the dead-letter spool into PostgreSQL (schedule + sensor).",
)
def dlq_replay() -> None:
    replay_dlq()


def spool_fingerprint(queue: DeadLetterQueue) -> tuple[int, str]:
    """How many records the spool holds, and a digest of their ids (changes exactly when
    records are added or removed, not when a failed replay rewrites them)."""
    ids = sorted(r.id for r in queue.list())
    return len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _replay_in_progress(instance: dg.DagsterInstance) -> bool:
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=JOB_NAME, statuses=ACTIVE_STATUSES), limit=1
    )
    return bool(runs)


@dg.sensor(
    job=dlq_replay,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a DLQ replay when new records are spooled (once per new content).",
)
def dlq_nonempty(
    context: dg.SensorEvaluationContext, dlq: DlqResource
) -> dg.SensorResult | dg.SkipReason:
    depth, fingerprint = spool_fingerprint(dlq.queue())
    if depth == 0:
        return dg.SkipReason("the DLQ is empty")
    if fingerprint == context.cursor:
        return dg.SkipReason(
            f"{depth} records, unchanged since the last request: the schedule retries them"
        )
    if _replay_in_progress(context.instance):
        return dg.SkipReason("a DLQ replay run is already queued or running")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"dlq-{fingerprint}", tags=RUN_TAGS)],
        cursor=fingerprint,
    )


@dg.schedule(
    job=dlq_replay,
    cron_schedule=CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retries the DLQ every 15 minutes (skips when it is empty).",
)
def dlq_replay_schedule(
    context: dg.ScheduleEvaluationContext, dlq: DlqResource
) -> dg.RunRequest | dg.SkipReason:
    depth = dlq.queue().count()
    if depth == 0:
        return dg.SkipReason("the DLQ is empty")
    if _replay_in_progress(context.instance):
        return dg.SkipReason("a DLQ replay run is already queued or running")
    when = context.scheduled_execution_time
    return dg.RunRequest(run_key=f"dlq-{when:%Y%m%dT%H%M}", tags=RUN_TAGS)


defs = dg.Definitions(jobs=[dlq_replay], sensors=[dlq_nonempty], schedules=[dlq_replay_schedule])
