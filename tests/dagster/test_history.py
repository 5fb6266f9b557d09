"""The history asset: daily partitions backfilled from the simulated gateway into PostgreSQL
(a range of partitions as one run, as a UI backfill does), rows per symbol in the metadata,
and the rollups and checks taking what it wrote like streamed bars."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mdp_core.calendars import open_intervals
from mdp_core.settings import HistorySettings, RollupSettings
from mdp_core.store.database import Database
from mdp_dagster.assets import RAW_ASSETS
from mdp_dagster.health import (
    CheckSettings,
    check_duplicates,
    check_gaps,
    check_matches_source,
    check_ohlc,
)
from mdp_dagster.history import HISTORY_KEY, build_history_defs, stream_symbols
from mdp_dagster.rollups import ROLLUP_KEYS, build_rollup_defs

START = date(2024, 1, 1)
DAY1, DAY2 = datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)


def _defs(resources: dict[str, object]) -> dg.Definitions:
    return dg.Definitions.merge(
        build_history_defs(HistorySettings(start=START)),
        build_rollup_defs(RollupSettings(start=START)),
        dg.Definitions(assets=RAW_ASSETS, resources=resources),
    )


def _asset(defs: dg.Definitions) -> dg.AssetsDefinition:
    return next(
        a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition) and a.key == HISTORY_KEY
    )


def _query(dsn: str, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        async with Database.connect(dsn, max_size=2) as db:
            return list(await db.pool.fetch(sql, *args))

    return asyncio.run(run())


def _minutes(start: datetime, end: datetime) -> int:
    return int(
        sum((hi - lo).total_seconds() for lo, hi in open_intervals("XNYS", start, end)) // 60
    )


@pytest.fixture
def streams(write_streams: Callable[[str], Path]) -> Path:
    return write_streams(
        """
        streams:
          - {name: bars, provider: ibkr, mode: bars, symbols: [AAPL, msft], client_id: 11}
          - {name: quotes, provider: ibkr, mode: quotes, symbols: [SPY], client_id: 12}
          - {name: disabled, provider: ibkr, mode: bars, symbols: [SPY], enabled: false}
        """
    )


def test_the_asset_loads_with_daily_partitions(resources: dict[str, object]) -> None:
    defs = _defs(resources)
    dg.Definitions.validate_loadable(defs)
    node = defs.resolve_asset_graph().get(HISTORY_KEY)
    assert node.backfill_policy == dg.BackfillPolicy.single_run()
    assert node.partitions_def.get_first_partition_key() == "2024-01-01"  # type: ignore[union-attr]


def test_symbols_come_from_the_enabled_ibkr_bar_streams(streams: Path) -> None:
    assert stream_symbols() == ["AAPL", "MSFT"]


def test_a_partition_range_backfills_and_the_rollups_and_checks_take_it(
    resources: dict[str, object], instance: dg.DagsterInstance, gateway_port: int,
    store_dsn: str, streams: Path,
) -> None:  # fmt: skip
    defs = _defs(resources)
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[HISTORY_KEY],
        tags={
            "dagster/asset_partition_range_start": "2024-01-03",
            "dagster/asset_partition_range_end": "2024-01-04",
        },
    )
    assert result.success
    mats = result.asset_materializations_for_node("mdp__bars_history")
    assert [m.partition for m in mats] == ["2024-01-03", "2024-01-04"]  # one run, both days
    mat = mats[0]
    slots = _minutes(DAY1, DAY2 + timedelta(days=1)) * 12  # 5-second bars of two sessions
    assert mat.metadata["rows"].value == {"AAPL": slots, "MSFT": slots}
    assert mat.metadata["dagster/row_count"].value == 2 * slots
    assert "| AAPL |" in mat.metadata["rows_per_symbol"].value  # type: ignore[operator]
    rows = _query(
        store_dsn, "SELECT symbol, count(*) AS n FROM mdp.bars WHERE resolution = '5s' GROUP BY 1"
    )
    assert {r["symbol"]: r["n"] for r in rows} == {"AAPL": slots, "MSFT": slots}

    # materializing the same partition again asks for nothing and adds nothing
    again = dg.materialize(
        [_asset(defs)], partition_key="2024-01-03", instance=instance, resources=resources
    )
    (mat2,) = again.asset_materializations_for_node("mdp__bars_history")
    assert mat2.metadata["requests"].value == 0 and mat2.metadata["dagster/row_count"].value == 0

    # the 1-minute rollup of that day takes the history like streamed 5-second bars
    rolled = job.execute_in_process(
        instance=instance, asset_selection=[ROLLUP_KEYS["1m"]], partition_key="2024-01-03-15:00"
    )
    assert rolled.success
    minutes = _query(
        store_dsn,
        "SELECT count(*) AS n FROM mdp.bars WHERE resolution = '1m' AND ts >= $1 AND ts < $2",
        DAY1 + timedelta(hours=15), DAY1 + timedelta(hours=16),
    )  # fmt: skip
    assert minutes[0]["n"] == 2 * 60

    async def checks() -> list[dg.AssetCheckResult]:
        async with Database.connect(store_dsn, max_size=2) as db:
            close = DAY1 + timedelta(hours=21)
            settings = CheckSettings(calendar="XNYS", window_minutes=390, gap_max_missing=0)
            return [
                await check_gaps(db, close, settings),
                await check_ohlc(db, "5s", DAY1, DAY2),
                await check_duplicates(db, "bars", "5s", DAY1, DAY2),
                await check_matches_source(
                    db, "1m", DAY1 + timedelta(hours=15), DAY1 + timedelta(hours=16)
                ),
            ]

    results = asyncio.run(checks())
    assert all(r.passed for r in results), [r.metadata for r in results]
    gaps = results[0].metadata
    assert gaps["missing_slots"].value == 0 and gaps["symbols_checked"].value == 2


def test_failures_fail_the_run_with_the_rows_kept(
    resources: dict[str, object], instance: dg.DagsterInstance, gateway_port: int,
    store_dsn: str, streams: Path,
) -> None:  # fmt: skip
    defs = _defs(resources)
    config = {"symbols": ["AAPL", "NOPE"], "resolution": "1m"}
    result = dg.materialize(
        [_asset(defs)], partition_key="2024-01-03", instance=instance, resources=resources,
        run_config={"ops": {"mdp__bars_history": {"config": config}}}, raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "1 request(s) or symbol(s) failed" in str(failure.event_specific_data)
    rows = _query(
        store_dsn, "SELECT count(*) AS n FROM mdp.bars WHERE symbol = 'AAPL' AND resolution = '1m'"
    )
    assert rows[0]["n"] == 390
