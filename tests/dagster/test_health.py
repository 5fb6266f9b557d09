"""The health asset, and the scheduled job that materializes it and runs every check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Bar
from mdp_core.settings import CheckSettings, get_settings
from mdp_core.store.database import Database
from mdp_core.store.heartbeats import Heartbeat, HeartbeatPolicy, stream_state, write_heartbeat
from mdp_dagster.assets import RAW_ASSETS
from mdp_dagster.health import HEALTH_KEY, build_health_defs
from mdp_dagster.rollups import build_rollup_defs
from mdp_dagster.supervisor import RunView, SupervisorPolicy, decide

NOW = datetime(2024, 1, 6, 15, 0, tzinfo=UTC)  # a Saturday: XNYS closed

STREAMS = """
streams:
  - {name: live, provider: synthetic, mode: bars, symbols: [AAPL, MSFT]}
  - {name: frozen, provider: synthetic, mode: quotes, symbols: [SPY]}
  - {name: done, provider: synthetic, mode: bars, symbols: [QQQ], enabled: false}
  - {name: never, provider: synthetic, mode: quotes, symbols: [NVDA, AMD, TSLA]}
"""


def heartbeats(dsn: str, rows: list[tuple[str, str, datetime, dict[str, Any]]]) -> None:
    async def run() -> None:
        async with Database.connect(dsn, max_size=2) as db:
            for stream, run_id, ts, counters in rows:
                await write_heartbeat(db, stream, run_id, counters, ts=ts)

    asyncio.run(run())


def spool(stream: str, n: int) -> None:
    bars = [
        Bar("AAPL", NOW + timedelta(seconds=5 * i), 1.0, 1.0, 1.0, 1.0, 1.0, "5s") for i in range(n)
    ]
    DeadLetterQueue(get_settings().dlq_dir).put(bars, RuntimeError("db down"), 3, stream=stream)


def full_defs(resources: dict[str, object], **kw: Any) -> dg.Definitions:
    return dg.Definitions.merge(
        build_rollup_defs(),
        build_health_defs(clock=lambda: NOW, **kw),
        dg.Definitions(assets=RAW_ASSETS, resources=resources),
    )


def test_health_tabulates_every_stream(
    store_dsn: str,
    resources: dict[str, object],
    instance: dg.DagsterInstance,
    write_streams: Callable[[str], Path],
) -> None:
    write_streams(STREAMS)
    live = {"state": "running", "rate": 12.5, "committed": 1000, "dead_lettered": 2,
            "dropped_total": 1}  # fmt: skip
    heartbeats(
        store_dsn,
        [
            ("live", "r1", NOW - timedelta(seconds=100), {"state": "running", "committed": 10}),
            ("live", "r1", NOW - timedelta(seconds=10), live),
            ("frozen", "r2", NOW - timedelta(seconds=300), {"state": "running", "committed": 7}),
            (
                "done",
                "r3",
                NOW - timedelta(seconds=20),
                {"state": "failed", "committed": 50, "error": "ProviderError: gone"},
            ),
        ],
    )
    spool("live", 2)
    spool("", 1)
    health = full_defs(
        resources, heartbeats=HeartbeatPolicy(interval=15.0, stale_factor=3.0)
    ).get_assets_def(HEALTH_KEY)
    result = dg.materialize([health], resources=resources, instance=instance)
    assert result.success
    (mat,) = result.get_asset_materialization_events()
    meta = mat.materialization.metadata
    rows = {r.data["stream"]: r.data for r in meta["streams"].value.records}
    assert list(rows) == ["live", "frozen", "done", "never"]
    assert {name: r["state"] for name, r in rows.items()} == {
        "live": "running",
        "frozen": "stale",
        "done": "stopped",
        "never": "stopped",
    }
    want_live = {
        "rate": 12.5,
        "committed": 1000,
        "dead_lettered": 2,
        "dropped": 1,
        "dlq_depth": 2,
        "run_id": "r1",
        "heartbeat_age_s": 10.0,
        "symbols": 2,
        "last_heartbeat": "2024-01-06T14:59:50+00:00",
        "mode": "bars",
    }
    assert {k: rows["live"][k] for k in want_live} == want_live
    assert rows["done"]["error"] == "ProviderError: gone" and rows["done"]["enabled"] is False
    assert rows["never"]["last_heartbeat"] == "-" and rows["never"]["symbols"] == 3
    assert rows["never"]["heartbeat_age_s"] is None  # unknown, not zero
    schema_columns = [c.name for c in meta["streams"].value.schema.columns]
    assert set(rows["live"]) <= set(schema_columns)
    counts = {k: meta[k].value for k in ("streams_total", "running", "stale", "stopped")}
    assert counts == {"streams_total": 4, "running": 1, "stale": 1, "stopped": 2}
    assert meta["dlq_depth"].value == 3
    assert "| live | running |" in meta["summary"].value


def test_health_fails_clearly_on_a_bad_streams_file(
    store_dsn: str,
    resources: dict[str, object],
    instance: dg.DagsterInstance,
    write_streams: Callable[[str], Path],
) -> None:
    write_streams("streams:\n  - {name: x, mode: sideways, symbols: [A]}\n")
    health = full_defs(resources).get_assets_def(HEALTH_KEY)
    result = dg.materialize([health], resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "mode" in str(failure.step_failure_data.error)


def test_scheduled_job_runs_health_and_every_check(
    store_dsn: str,
    resources: dict[str, object],
    instance: dg.DagsterInstance,
    write_streams: Callable[[str], Path],
) -> None:
    write_streams(STREAMS)
    defs = full_defs(resources)
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("mdp_health")
    result = job.execute_in_process(resources=resources, instance=instance)
    assert result.success
    assert [m.asset_key for m in result.get_asset_materialization_events()] == [HEALTH_KEY]
    evaluations = {
        (e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()
    }
    assert set(evaluations) == {
        ("quotes", "fresh"),
        ("quotes", "no_duplicates"),
        ("quotes", "dlq_depth"),
        ("bars_5s", "fresh"),
        ("bars_5s", "gaps"),
        ("bars_5s", "ohlc_sane"),
        ("bars_5s", "no_duplicates"),
        ("bars_5s", "dlq_depth"),
        *[
            (f"bars_{r}", c)
            for r in ("1m", "5m", "1h", "1d")
            for c in ("ohlc_sane", "no_duplicates", "matches_source")
        ],
    }
    # an empty store on a Saturday: everything holds
    assert all(e.passed for e in evaluations.values())


def test_schedule_requests_the_job() -> None:
    defs = build_health_defs(CheckSettings(cron="*/10 * * * *"))
    (schedule,) = defs.schedules or []
    assert isinstance(schedule, dg.ScheduleDefinition)
    assert schedule.cron_schedule == "*/10 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    ctx = dg.build_schedule_context(scheduled_execution_time=NOW)
    data = schedule.evaluate_tick(ctx)
    assert len(data.run_requests or []) == 1


@pytest.mark.parametrize("field", ["freshness_minutes", "window_minutes"])
def test_settings_validate(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CheckSettings(**{field: 0})


@pytest.mark.parametrize("age", [29.0, 30.0, 31.0, 300.0])
def test_supervisor_and_health_judge_staleness_by_one_rule(age: float) -> None:
    """A STARTED run's heartbeat of a given age: the supervisor replaces the run exactly when
    the health asset calls the stream stale (both use HeartbeatPolicy.is_stale)."""
    now = 1_800_000_000.0
    policy = HeartbeatPolicy(interval=10.0, stale_factor=3.0, start_grace=60.0)
    beat = Heartbeat("r1", datetime.fromtimestamp(now - age, UTC), {"state": "running"})
    health = stream_state(beat, datetime.fromtimestamp(now, UTC), policy)
    run = RunView("r1", "STARTED", created=now - 1000, started=now - 1000)
    decision = decide("s", [run], {"r1": now - age}, now, SupervisorPolicy(heartbeat=policy))
    assert (health == "stale") is decision.launch is (age > 30.0)
    assert health in ("stale", "running")
