"""The dlq_replay job against PostgreSQL, and its sensor and schedule."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Bar, Quote
from mdp_core.settings import get_settings
from mdp_core.store.database import Database
from mdp_dagster.dlq import defs, dlq_nonempty, dlq_replay, dlq_replay_schedule
from mdp_dagster.resources import DlqResource
from tests.dagster.helpers import sql_value

T = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def queue() -> DeadLetterQueue:
    return DeadLetterQueue(get_settings().dlq_dir)  # where DlqResource() points


def spool_bars(n: int, symbol: str = "AAPL", start: datetime = T) -> None:
    bars = [
        Bar(symbol, start + timedelta(seconds=5 * i), 10.0, 11.0, 9.0, 10.5, 100.0, "5s")
        for i in range(n)
    ]
    queue().put(bars, ConnectionResetError("connection lost"), attempts=5, stream="ibkr_bars")


def spool_quotes(n: int) -> None:
    quotes = [Quote("MSFT", T + timedelta(seconds=i), bid=10.0, ask=10.1) for i in range(n)]
    queue().put(quotes, ConnectionResetError("connection lost"), attempts=5, stream="ibkr_quotes")


def migrate_and_run(dsn: str, statement: str) -> None:
    async def run() -> None:
        async with Database.connect(dsn, max_size=1) as db:  # creates the schema
            await db.pool.execute(statement)

    asyncio.run(run())


def replay(resources: dict[str, object], instance: dg.DagsterInstance) -> dict[str, Any]:
    result = dlq_replay.execute_in_process(resources=resources, instance=instance)
    assert result.success
    (output,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    metadata = output.step_output_data.metadata
    values = {k: getattr(v, "value", v) for k, v in metadata.items()}
    summary = result.output_for_node("replay_dlq")
    assert summary == {k: values[k] for k in summary}  # the output is the metadata's counts
    return values


def test_job_replays_the_spool_into_postgres(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance
) -> None:
    spool_bars(3)
    spool_quotes(2)
    assert queue().count() == 5
    first = replay(resources, instance)
    assert {
        k: first[k]
        for k in (
            "pending_before",
            "replayed",
            "new_rows",
            "still_failing",
            "quarantined",
            "pending_after",
        )
    } == {
        "pending_before": 5,
        "replayed": 5,
        "new_rows": 5,
        "still_failing": 0,
        "quarantined": 0,
        "pending_after": 0,
    }
    assert sql_value(store_dsn, "SELECT count(*) FROM mdp.bars WHERE resolution = '5s'") == 3
    assert sql_value(store_dsn, "SELECT count(*) FROM mdp.quotes") == 2
    assert queue().count() == 0
    again = replay(resources, instance)  # nothing left: adds nothing
    assert (again["replayed"], again["pending_before"]) == (0, 0)
    assert sql_value(store_dsn, "SELECT count(*) FROM mdp.bars") == 3
    assert sql_value(store_dsn, "SELECT count(*) FROM mdp.quotes") == 2


def test_job_reports_still_failing_and_quarantined(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance
) -> None:
    spool_bars(2)
    spool_bars(1, symbol="POISON")
    # the table refuses POISON (a data error: kept, then quarantined after 3 replays)
    migrate_and_run(
        store_dsn,
        "ALTER TABLE mdp.bars ADD CONSTRAINT no_poison CHECK (symbol <> 'POISON') NOT VALID",
    )
    first = replay(resources, instance)
    assert (first["replayed"], first["still_failing"], first["quarantined"]) == (2, 1, 0)
    assert first["errors"] == {"CheckViolationError": 1}
    assert queue().count() == 1
    replay(resources, instance)
    third = replay(resources, instance)
    assert (third["replayed"], third["still_failing"], third["quarantined"]) == (0, 0, 1)
    assert (third["pending_after"], third["quarantine_total"]) == (0, 1)
    assert sql_value(store_dsn, "SELECT count(*) FROM mdp.bars") == 2


def sensor_tick(
    instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult | dg.SkipReason:
    ctx = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"dlq": DlqResource()}
    )
    result = dlq_nonempty(ctx)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def test_sensor_requests_once_per_new_content(instance: dg.DagsterInstance) -> None:
    assert isinstance(sensor_tick(instance, None), dg.SkipReason)  # empty
    spool_bars(2)
    first = sensor_tick(instance, None)
    assert isinstance(first, dg.SensorResult)
    (request,) = first.run_requests or []
    assert request.run_key == f"dlq-{first.cursor}"
    same = sensor_tick(instance, first.cursor)  # unchanged spool: no new request
    assert isinstance(same, dg.SkipReason) and "unchanged" in (same.skip_message or "")
    spool_bars(1, start=T + timedelta(hours=1))  # new content: a new request
    second = sensor_tick(instance, first.cursor)
    assert isinstance(second, dg.SensorResult)
    (request2,) = second.run_requests or []
    assert request2.run_key != request.run_key and second.cursor != first.cursor


def test_sensor_waits_while_a_replay_is_in_progress(instance: dg.DagsterInstance) -> None:
    spool_bars(1)
    instance.create_run_for_job(dlq_replay)  # NOT_STARTED: counts as in progress
    result = sensor_tick(instance, None)
    assert isinstance(result, dg.SkipReason) and "already" in (result.skip_message or "")


def test_schedule(instance: dg.DagsterInstance) -> None:
    assert dlq_replay_schedule.cron_schedule == "*/15 * * * *"
    assert dlq_replay_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert dlq_nonempty.default_status == dg.DefaultSensorStatus.RUNNING
    when = datetime(2024, 1, 2, 15, 15, tzinfo=UTC)

    def tick() -> Any:
        ctx = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=when, resources={"dlq": DlqResource()}
        )
        return dlq_replay_schedule(ctx)

    assert isinstance(tick(), dg.SkipReason)  # empty spool
    spool_quotes(1)
    request = tick()
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == "dlq-20240102T1515"
    assert request.tags["mdp/kind"] == "dlq"


def test_definitions_load(resources: dict[str, object]) -> None:
    merged = dg.Definitions.merge(defs, dg.Definitions(resources=resources))
    dg.Definitions.validate_loadable(merged)
    assert merged.resolve_job_def("dlq_replay").executor_def is dg.in_process_executor
