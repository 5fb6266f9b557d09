"""The retention schedule and job on a real instance and the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from mdp_core.store.database import Database
from mdp_core.store.heartbeats import write_heartbeat
from mdp_dagster.definitions import defs
from mdp_dagster.retention import retention_job

TICK = datetime(2026, 1, 5, 0, 30, tzinfo=UTC)


def _seed(dsn: str, today: date) -> None:
    """Partitions of quotes and bars for the last ten days, and a heartbeat a day."""

    async def run() -> None:
        async with Database.connect(dsn) as db:
            days = [today - timedelta(days=n) for n in range(10)]
            for table in ("quotes", "bars"):
                await db.ensure_partitions(table, days, ahead=0)
            for n in range(10):
                ts = datetime.combine(today, datetime.min.time(), UTC) - timedelta(days=n)
                await write_heartbeat(db, "s", "run", {"n": n}, ts=ts + timedelta(hours=12))

    asyncio.run(run())


def _state(dsn: str) -> tuple[list[str], list[str], int]:
    async def run() -> tuple[list[str], list[str], int]:
        async with Database.connect(dsn) as db:
            return (
                await db.partitions("quotes"),
                await db.partitions("bars"),
                await db.count("stream_heartbeats"),
            )

    return asyncio.run(run())


def test_schedule_skips_without_a_retention_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MDP_RETENTION_DAYS", raising=False)
    schedule = defs.resolve_schedule_def("mdp_retention_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    ctx = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 1, 5, 0, 30, tzinfo=UTC)
    )
    data = schedule.evaluate_tick(ctx)
    assert data.run_requests == []
    assert "MDP_RETENTION_DAYS is not set" in (data.skip_message or "")


def test_schedule_drops_what_is_older_than_the_setting(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    today = datetime.now(UTC).date()
    _seed(store_dsn, today)
    monkeypatch.setenv("MDP_RETENTION_DAYS", "3")
    schedule = defs.resolve_schedule_def("mdp_retention_schedule")
    tick = datetime.combine(today, datetime.min.time(), UTC) + timedelta(minutes=30)
    (request,) = (
        schedule.evaluate_tick(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
        ).run_requests
        or []
    )
    assert request.run_key == f"retention-{today:%Y%m%d}"
    result = retention_job.execute_in_process(
        run_config=request.run_config, resources=resources, instance=instance
    )
    assert result.success
    quotes, bars, heartbeats = _state(store_dsn)
    # kept: the days whose end is within the last 3 days (today, and the 3 before it)
    kept = sorted(f"{today - timedelta(days=n):%Y%m%d}" for n in range(4))
    assert quotes == [f"quotes_p{d}" for d in kept]
    assert bars == [f"bars_p{d}" for d in kept]
    assert heartbeats == 3  # noon of today-0..2 are younger than now - 3 days
    # a second run drops nothing more
    again = retention_job.execute_in_process(
        run_config=request.run_config, resources=resources, instance=instance
    )
    assert again.success and _state(store_dsn)[0] == quotes


def test_bad_retention_setting_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_RETENTION_DAYS", "-2")
    schedule = defs.resolve_schedule_def("mdp_retention_schedule")
    ctx = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 1, 5, 0, 30, tzinfo=UTC)
    )
    with pytest.raises(Exception, match="evaluation of schedule mdp_retention_schedule") as exc:
        schedule.evaluate_tick(ctx)
    assert "retention_days" in str(exc.value.__cause__)  # the setting and why it is refused
