"""Rollup assets materialized in process on PostgreSQL, and the new-data sensor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from mdp_core.models import Bar
from mdp_core.settings import RollupSettings
from mdp_core.store.database import Database
from mdp_core.store.rollups import fetch_bars
from mdp_core.store.sinks import BarsSink
from mdp_dagster.assets import RAW_ASSETS
from mdp_dagster.rollup_checks import deadline_minute, partition_check_keys
from mdp_dagster.rollups import ROLLUP_KEYS, build_rollup_defs, sparkline
from tests.dagster.helpers import sql_value
from tests.store.test_rollups_sql import (
    START,
    assert_same_bars,
    pandas_rollup,
    random_bars,
    table_frame,
)

SETTINGS = RollupSettings(start=date(2024, 1, 1), grace_seconds=120, lookback_hours=48)


def write_bars(dsn: str, bars: list[Bar]) -> None:
    async def run() -> None:
        async with Database.connect(dsn, max_size=2) as db:
            await BarsSink(db).write(bars)

    asyncio.run(run())


def read_bars(dsn: str, resolution: str, start: datetime, end: datetime) -> list[Bar]:
    async def run() -> list[Bar]:
        async with Database.connect(dsn, max_size=2) as db:
            return await fetch_bars(db, None, resolution, start, end)

    return asyncio.run(run())


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def assets_of(defs: dg.Definitions) -> dict[str, dg.AssetsDefinition]:
    found = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    return {a.key.path[-1].removeprefix("bars_"): a for a in found}


def full_defs(defs: dg.Definitions, resources: dict[str, object]) -> dg.Definitions:
    return dg.Definitions.merge(defs, dg.Definitions(assets=RAW_ASSETS, resources=resources))


def test_definitions_load(resources: dict[str, object]) -> None:
    defs = full_defs(build_rollup_defs(SETTINGS), resources)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    for res, key in ROLLUP_KEYS.items():
        node = graph.get(key)
        assert node.group_name == "rollups"
        assert {"postgres", "sql"} <= set(node.kinds)
        assert node.parent_keys == {dg.AssetKey(["mdp", "bars_5s"])}
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
        length = node.partitions_def.time_window_for_partition_key(  # type: ignore[union-attr]
            node.partitions_def.get_first_partition_key()  # type: ignore[union-attr]
        )
        assert length.end - length.start == (
            timedelta(days=1) if res == "1d" else timedelta(hours=1)
        )
    sensor = defs.resolve_sensor_def("rollups_new_data")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_partitions_equal_pandas_resample(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance
) -> None:
    bars = random_bars(7)  # 2024-01-02 21:00 .. 2024-01-03 03:00, three symbols, gaps
    write_bars(store_dsn, bars)
    assets = assets_of(build_rollup_defs(SETTINGS))
    hour = datetime(2024, 1, 2, 23, tzinfo=UTC)
    result = dg.materialize(
        [assets["1m"], assets["5m"], assets["1h"]],
        partition_key="2024-01-02-23:00",
        resources=resources,
        instance=instance,
    )
    assert result.success
    in_hour = [b for b in bars if hour <= b.ts < hour + timedelta(hours=1)]
    for res in ("1m", "5m", "1h"):
        got = table_frame(read_bars(store_dsn, res, START, START + timedelta(days=1)))
        assert_same_bars(got, pandas_rollup(in_hour, res))  # exactly this hour, nothing else
    mats = {m.asset_key: m for m in result.get_asset_materialization_events()}
    meta = mats[ROLLUP_KEYS["1m"]].materialization.metadata
    want_1m = pandas_rollup(in_hour, "1m")
    assert meta["rows"].value == len(want_1m)
    assert meta["symbols_count"].value == 3
    assert meta["symbols"].value == "AAPL, MSFT, SPY"
    summary = meta["summary"].value
    assert all(f"| {s} |" in summary for s in ("AAPL", "MSFT", "SPY"))
    assert "▁" in summary and "█" in summary

    day = dg.materialize(
        [assets["1d"]], partition_key="2024-01-03", resources=resources, instance=instance
    )
    assert day.success
    on_day = [b for b in bars if b.ts >= datetime(2024, 1, 3, tzinfo=UTC)]
    got = table_frame(
        read_bars(store_dsn, "1d", START - timedelta(days=1), START + timedelta(days=2))
    )
    assert_same_bars(got, pandas_rollup(on_day, "1d"))


def test_single_run_backfill_over_a_range(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance
) -> None:
    bars = random_bars(8)
    write_bars(store_dsn, bars)
    assets = assets_of(build_rollup_defs(SETTINGS))
    result = dg.materialize(
        [assets["5m"]],
        resources=resources,
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "2024-01-02-21:00",
            "dagster/asset_partition_range_end": "2024-01-03-02:00",
        },
    )
    assert result.success
    # one run and one SQL over the whole range; Dagster records one event per partition
    mats = result.get_asset_materialization_events()
    assert sorted(m.partition for m in mats) == [
        f"2024-01-0{d}-{h:02d}:00" for d, h in [(2, 21), (2, 22), (2, 23), (3, 0), (3, 1), (3, 2)]
    ]
    meta = mats[0].materialization.metadata
    assert meta["range_start"].value == START.timestamp()
    assert meta["range_end"].value == (START + timedelta(hours=6)).timestamp()
    got = table_frame(read_bars(store_dsn, "5m", START, START + timedelta(hours=6)))
    assert_same_bars(got, pandas_rollup(bars, "5m"))
    # idempotent: the same range again writes nothing and leaves the same bars
    again = dg.materialize(
        [assets["5m"]], resources=resources, instance=instance, tags=result.dagster_run.tags
    )
    meta2 = again.get_asset_materialization_events()[0].materialization.metadata
    assert meta2["written"].value == 0
    assert meta2["rows"].value == len(got)
    assert_same_bars(
        table_frame(read_bars(store_dsn, "5m", START, START + timedelta(hours=6))), got
    )


# -- the sensor -----------------------------------------------------------------------------

DAY = datetime(2024, 1, 3, tzinfo=UTC)


def bar_at(ts: datetime, symbol: str = "AAPL") -> Bar:
    return Bar(symbol, ts, 10.0, 11.0, 9.0, 10.5, 100.0, "5s", source="test")


Tick = Callable[[], set[tuple[str, str]]]


def requested(defs: dg.Definitions, rr: dg.RunRequest) -> list[tuple[str, str]]:
    """The (asset, partition key) pairs a run request covers (one partition or a range)."""
    pairs = []
    for key in rr.asset_selection or []:
        partitions = defs.resolve_asset_graph().get(key).partitions_def
        assert partitions is not None
        if rr.partition_key is not None:
            keys = [rr.partition_key]
        else:
            span = rr.partition_key_range
            assert span is not None
            keys = list(partitions.get_partition_keys_in_range(span))
        pairs += [(key.path[-1], k) for k in keys]
    return pairs


@pytest.fixture
def sensor_tick(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance
) -> tuple[Clock, Tick, list[dg.RunRequest]]:
    """A clock, a function running one sensor tick (carrying the cursor) and returning the
    (asset, partition) pairs it requested, and every request so far."""
    clock = Clock(DAY)
    defs = full_defs(build_rollup_defs(SETTINGS, clock=clock), resources)
    sensor = defs.resolve_sensor_def("rollups_new_data")
    state: dict[str, str | None] = {"cursor": None}
    requests: list[dg.RunRequest] = []

    def tick() -> set[tuple[str, str]]:
        ctx = dg.build_sensor_context(
            instance=instance, cursor=state["cursor"], resources=resources, definitions=defs
        )
        result = sensor(ctx)
        if isinstance(result, dg.SkipReason):
            return set()
        assert isinstance(result, dg.SensorResult)
        state["cursor"] = result.cursor
        requests.extend(result.run_requests or [])
        return {pair for rr in result.run_requests or [] for pair in requested(defs, rr)}

    return clock, tick, requests


def test_sensor_requests_each_closed_partition_with_data_once(
    store_dsn: str, sensor_tick: tuple[Clock, Tick, list[dg.RunRequest]]
) -> None:
    clock, tick, requests = sensor_tick
    write_bars(
        store_dsn,
        [
            bar_at(datetime(2024, 1, 1, 10, 0, tzinfo=UTC)),  # older than the lookback
            bar_at(DAY.replace(hour=9, minute=10)),
            bar_at(DAY.replace(hour=9, minute=50), "MSFT"),
            bar_at(DAY.replace(hour=11, minute=30)),
            bar_at(DAY.replace(hour=12, minute=0, second=20)),  # the open window
        ],
    )
    hourly = ("bars_1m", "bars_5m", "bars_1h")

    clock.now = DAY.replace(hour=12, minute=1)  # 11:00-12:00 closed, but within the grace
    assert tick() == {(a, "2024-01-03-09:00") for a in hourly}  # 10:00 had no data

    clock.now = DAY.replace(hour=12, minute=2, second=30)  # grace over for 11:00
    assert tick() == {(a, "2024-01-03-11:00") for a in hourly}
    assert tick() == set()  # nothing new: nothing requested

    write_bars(store_dsn, [bar_at(DAY.replace(hour=10, minute=5))])  # late, behind the cursor
    clock.now = DAY + timedelta(days=1, minutes=2, seconds=1)  # the day closed too
    assert tick() == {(a, "2024-01-03-12:00") for a in hourly} | {("bars_1d", "2024-01-03")}
    assert tick() == set()

    pairs = [
        (key.path[-1], rr.partition_key) for rr in requests for key in rr.asset_selection or []
    ]
    assert len(pairs) == len(set(pairs)) == 10  # never the same partition twice
    run_keys = [rr.run_key for rr in requests]
    assert len(run_keys) == len(set(run_keys)) == 4  # one run per partition, assets grouped
    assert {rr.job_name for rr in requests} == {"rollups_hourly", "rollups_daily"}


def test_sensor_rolls_a_backlog_up_in_one_ranged_run(
    store_dsn: str,
    resources: dict[str, object],
    instance: dg.DagsterInstance,
    sensor_tick: tuple[Clock, Tick, list[dg.RunRequest]],
) -> None:
    """After downtime, consecutive hours with data form one run over the range (one SQL
    per asset); a separate hour gets its own run; the result equals pandas."""
    clock, tick, requests = sensor_tick
    bars = [
        bar_at(DAY.replace(hour=h) + timedelta(minutes=7 * i), s)
        for h in (1, 2, 3, 4, 5, 8)
        for i in range(8)
        for s in ("AAPL", "MSFT")
    ]
    write_bars(store_dsn, bars)
    clock.now = DAY.replace(hour=10, minute=5)
    hourly = ("bars_1m", "bars_5m", "bars_1h")
    hours = ("01", "02", "03", "04", "05", "08")
    assert tick() == {(a, f"2024-01-03-{h}:00") for a in hourly for h in hours}
    ranged, single = requests
    assert ranged.partition_key is None and single.partition_key == "2024-01-03-08:00"
    assert ranged.run_key == "2024-01-03-01:00..2024-01-03-05:00:1m+5m+1h"
    job = full_defs(build_rollup_defs(SETTINGS), resources).resolve_job_def("rollups_hourly")
    result = job.execute_in_process(
        asset_selection=list(ranged.asset_selection or []),
        resources=resources,
        instance=instance,
        tags=ranged.tags,
    )
    assert result.success
    early = [b for b in bars if b.ts.hour <= 5]
    for res in ("1m", "5m", "1h"):
        got = table_frame(read_bars(store_dsn, res, DAY, DAY + timedelta(days=1)))
        assert_same_bars(got, pandas_rollup(early, res))


def test_sensor_request_runs(
    store_dsn: str,
    resources: dict[str, object],
    instance: dg.DagsterInstance,
    sensor_tick: tuple[Clock, Tick, list[dg.RunRequest]],
) -> None:
    """What the sensor requests is a valid run of its job, and rolls the window up."""
    clock, tick, requests = sensor_tick
    bars = [bar_at(DAY.replace(hour=9) + timedelta(seconds=5 * i)) for i in range(30)]
    write_bars(store_dsn, bars)
    clock.now = DAY.replace(hour=10, minute=5)
    assert tick()
    (rr,) = requests
    job = full_defs(build_rollup_defs(SETTINGS), resources).resolve_job_def(rr.job_name or "")
    job = job.get_subset(
        asset_selection=set(rr.asset_selection or []),
        asset_check_selection=set(rr.asset_check_keys or []),
    )
    result = job.execute_in_process(
        partition_key=rr.partition_key,
        resources=resources,
        instance=instance,
        tags=rr.tags,
    )
    assert result.success
    got = table_frame(read_bars(store_dsn, "1m", DAY, DAY + timedelta(days=1)))
    assert_same_bars(got, pandas_rollup(bars, "1m"))
    assert len(read_bars(store_dsn, "1h", DAY, DAY + timedelta(days=1))) == 1
    # the same run checked the partition it wrote (and only that one)
    evaluations = result.get_asset_check_evaluations()
    names = {(e.asset_key.path[-1], e.check_name) for e in evaluations}
    assert names == {
        (f"bars_{res}", check)
        for res in ("1m", "5m", "1h")
        for check in ("partition_ohlc_sane", "partition_no_duplicates")
    }
    assert all(e.passed for e in evaluations)
    ohlc_1m = next(
        e for e in evaluations
        if e.asset_key == ROLLUP_KEYS["1m"] and e.check_name == "partition_ohlc_sane"
    )  # fmt: skip
    assert ohlc_1m.metadata["rows_checked"].value == len(got)  # 3 bars of 1m in 9:00-9:02:30
    assert ohlc_1m.metadata["window_start"].value == DAY.replace(hour=9).isoformat()


def test_partition_check_fails_on_a_bad_bar_of_that_partition(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance
) -> None:
    """A bad rollup row in the partition fails its check; one in another partition does not."""
    write_bars(
        store_dsn, [bar_at(DAY.replace(hour=9) + timedelta(seconds=5 * i)) for i in range(12)]
    )
    defs = full_defs(build_rollup_defs(SETTINGS), resources)
    job = defs.resolve_job_def("rollups_hourly")

    def run(partition: str) -> dict[str, bool]:
        keys = [ROLLUP_KEYS["1m"]]
        subset = job.get_subset(
            asset_selection=set(keys), asset_check_selection=set(partition_check_keys(keys))
        )
        result = subset.execute_in_process(
            partition_key=partition, resources=resources, instance=instance, raise_on_error=False
        )
        return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}

    # A 1m row with high < low in the 10:00 partition (the table's constraint, dropped for
    # this test's database, would refuse it): only the check of that partition fails.
    sql_value(store_dsn, "ALTER TABLE mdp.bars DROP CONSTRAINT bars_prices_check")
    sql_value(
        store_dsn,
        "INSERT INTO mdp.bars (symbol, resolution, ts, open, high, low, close, volume) "
        "VALUES ('AAPL', '1m', $1, 10, 9, 11, 10, 1)",
        DAY.replace(hour=10, minute=30),
    )
    assert run("2024-01-03-09:00") == {"partition_ohlc_sane": True, "partition_no_duplicates": True}
    assert run("2024-01-03-10:00") == {
        "partition_ohlc_sane": False,
        "partition_no_duplicates": True,
    }


def test_rollup_freshness_checks_and_sensor(resources: dict[str, object]) -> None:
    defs = full_defs(build_rollup_defs(SETTINGS), resources)
    graph = defs.resolve_asset_graph()
    for key in ROLLUP_KEYS.values():
        checks = {k.name for k in graph.get_check_keys_for_assets({key})}
        assert {"freshness_check", "partition_ohlc_sane", "partition_no_duplicates"} <= checks
    sensor = defs.resolve_sensor_def("rollups_freshness")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert deadline_minute(120) == 10 and deadline_minute(900) == 21


def test_an_empty_window_is_observed_once_and_still_rolled_up_when_bars_arrive(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance
) -> None:
    """Without 5-second bars the sensor requests no run; it observes each asset's two newest
    closed windows once (``rows: 0``, what the freshness check accepts). Bars that reach
    such a window later (a backfill after an outage) are rolled up all the same."""
    clock = Clock(DAY + timedelta(hours=5))  # 05:00: the newest closed hour is 03:00-04:00
    defs = full_defs(build_rollup_defs(SETTINGS, clock=clock), resources)
    sensor = defs.resolve_sensor_def("rollups_new_data")
    cursor: list[str | None] = [None]

    def tick() -> tuple[set[tuple[str, str]], set[tuple[str, str | None, int]]]:
        ctx = dg.build_sensor_context(
            instance=instance, cursor=cursor[0], resources=resources, definitions=defs
        )
        result = sensor(ctx)
        if isinstance(result, dg.SkipReason):
            return set(), set()
        assert isinstance(result, dg.SensorResult)
        cursor[0] = result.cursor
        runs = {pair for rr in result.run_requests or [] for pair in requested(defs, rr)}
        observed = {
            (e.asset_key.path[-1], e.partition, e.metadata["rows"].value)
            for e in result.asset_events or []
            if isinstance(e, dg.AssetObservation)
        }
        return runs, observed

    hourly = ("bars_1m", "bars_5m", "bars_1h")
    runs, observed = tick()
    assert runs == set()
    assert observed == {
        (a, hour, 0) for a in hourly for hour in ("2024-01-03-02:00", "2024-01-03-03:00")
    } | {("bars_1d", "2024-01-02", 0)}  # 2024-01-01 is older than the lookback
    assert tick() == (set(), set())  # observed once

    clock.now = DAY + timedelta(hours=6)  # an hour on, still nothing: the next hour observed
    assert tick() == (set(), {(a, "2024-01-03-04:00", 0) for a in hourly})

    write_bars(store_dsn, [bar_at(DAY.replace(hour=3, minute=20))])  # a backfill, late
    runs, observed = tick()
    assert runs == {(a, "2024-01-03-03:00") for a in hourly}
    assert observed == set()


def _last_closed_hour(now: datetime) -> str:
    """The partition the hourly freshness check expects at ``now`` (deadline: minute
    ``deadline_minute`` of each hour, UTC)."""
    deadline = now.replace(minute=deadline_minute(SETTINGS.grace_seconds), second=0, microsecond=0)
    if deadline > now:
        deadline -= timedelta(hours=1)
    start = deadline.replace(minute=0) - timedelta(hours=1)
    return start.strftime("%Y-%m-%d-%H:%M")


def test_the_freshness_check_accepts_an_observed_empty_window(
    resources: dict[str, object], instance: dg.DagsterInstance
) -> None:
    """On a real instance: the newest closed hour neither rolled up nor observed fails the
    freshness check (a warning); observed as empty by the sensor's event, it passes."""
    rollups = build_rollup_defs(RollupSettings(grace_seconds=SETTINGS.grace_seconds))
    keys = [
        k
        for c in rollups.asset_checks or []
        if isinstance(c, dg.AssetChecksDefinition)
        for k in c.check_keys
        if k.name == "freshness_check" and k.asset_key == ROLLUP_KEYS["1h"]
    ]
    job = dg.define_asset_job("fresh_1h", selection=dg.AssetSelection.checks(*keys))
    defs = dg.Definitions.merge(full_defs(rollups, resources), dg.Definitions(jobs=[job]))

    def evaluate() -> tuple[bool, str]:
        expected = _last_closed_hour(datetime.now(UTC))
        result = defs.resolve_job_def("fresh_1h").execute_in_process(
            instance=instance, raise_on_error=False
        )
        (evaluation,) = result.get_asset_check_evaluations()
        if expected != _last_closed_hour(datetime.now(UTC)):  # the deadline passed meanwhile
            return evaluate()
        return evaluation.passed, expected

    passed, partition = evaluate()
    assert not passed
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=ROLLUP_KEYS["1h"],
            partition=partition,
            metadata={"rows": 0, "dagster/last_updated_timestamp": dg.MetadataValue.timestamp(
                datetime.now(UTC))},
        )
    )  # fmt: skip
    passed, observed = evaluate()
    assert passed and observed == partition


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([1.0, 1.0]) == "▄▄"
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"


def test_store_resource_is_required() -> None:
    """The module's defs do not bind resources (definitions.py does)."""
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="'store'"):
        dg.Definitions.validate_loadable(build_rollup_defs(SETTINGS))
