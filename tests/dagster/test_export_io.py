"""The Parquet export asset and mdp_io_manager, materialized in process on a real Dagster
instance against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mdp_core.models import Bar, Quote
from mdp_core.settings import RollupSettings
from mdp_core.store.database import Database
from mdp_core.store.rollups import rollup_bars
from mdp_core.store.sinks import BarsSink, QuotesSink
from mdp_dagster.assets import BARS_5S, QUOTES, RAW_ASSETS
from mdp_dagster.definitions import defs as location
from mdp_dagster.export import EXPORT_KEY, ExportResource, build_export_defs
from mdp_dagster.io_manager import IO_MANAGER_KEY, MdpIOManager, table_of
from mdp_dagster.rollups import ROLLUP_KEYS, build_rollup_defs

SETTINGS = RollupSettings(start=date(2024, 1, 1))
DAY = datetime(2024, 1, 3, tzinfo=UTC)
DAILY = dg.DailyPartitionsDefinition("2024-01-01")


def five_second_bars(symbols: tuple[str, ...] = ("AAPL", "MSFT"), hours: int = 2) -> list[Bar]:
    """5 s bars from 2024-01-03 14:00 for ``hours``, and a few on the next day."""
    out = []
    for k, symbol in enumerate(symbols):
        for i in range(hours * 720):
            o = 50.0 + k + (i % 11) * 0.01
            ts = DAY + timedelta(hours=14, seconds=5 * i)
            out.append(Bar(symbol, ts, o, o + 0.02, o - 0.02, o, 3.0, "5s", vwap=o))
        out.append(Bar(symbol, DAY + timedelta(days=1, hours=1), 9.0, 9.0, 9.0, 9.0, 1.0, "5s"))
    return out


async def load_and_roll_up(dsn: str, bars: list[Bar], quotes: list[Quote] = ()) -> None:  # type: ignore[assignment]
    async with Database.connect(dsn, max_size=2) as db:
        await BarsSink(db).write(bars)
        await QuotesSink(db).write(list(quotes))
        for res in ROLLUP_KEYS:
            await rollup_bars(db, res, DAY - timedelta(days=1), DAY + timedelta(days=2))


def test_the_code_location_wires_the_export_and_the_io_manager() -> None:
    graph = location.resolve_asset_graph()
    node = graph.get(EXPORT_KEY)
    assert node.parent_keys == set(ROLLUP_KEYS.values())
    assert node.partitions_def is not None and node.group_name == "exports"
    for key in [*ROLLUP_KEYS.values(), BARS_5S.key, QUOTES.key]:
        assert graph.get(key).io_manager_key == IO_MANAGER_KEY  # loadable as inputs
    schedule = location.resolve_schedule_def("bars_parquet_daily")
    assert schedule.cron_schedule == "30 1 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert {"export", IO_MANAGER_KEY} <= set(location.resources or {})


def test_export_asset_writes_the_day_and_reports_files_and_rows(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    asyncio.run(load_and_roll_up(store_dsn, five_second_bars()))
    export_defs = build_export_defs(SETTINGS)
    (asset,) = [a for a in export_defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    bound = {**resources, "export": ExportResource(directory=str(tmp_path / "out"))}
    for _attempt in range(2):  # re-materializing a day replaces its files with the same
        result = dg.materialize(
            [asset], partition_key="2024-01-03", resources=bound, instance=instance
        )
        assert result.success
        (mat,) = result.get_asset_materialization_events()
        meta = {k: v.value for k, v in mat.materialization.metadata.items()}
        expected = {"1m": 2 * 120, "5m": 2 * 24, "1h": 2 * 2, "1d": 2}
        assert meta["files"] == 4
        assert {r: meta[f"rows_{r}"] for r in expected} == expected
        assert meta["rows"] == meta["dagster/row_count"] == sum(expected.values())
        assert meta["path"] == str(tmp_path / "out" / "bars")
        assert "`bars/resolution=1m/date=2024-01-03/part-0.parquet`" in meta["written"]
    files = sorted((tmp_path / "out").rglob("*.parquet"))
    assert [f.relative_to(tmp_path / "out").as_posix() for f in files] == [
        f"bars/resolution={r}/date=2024-01-03/part-0.parquet" for r in ("1d", "1h", "1m", "5m")
    ]
    one_minute = pq.read_table(tmp_path / "out/bars/resolution=1m/date=2024-01-03/part-0.parquet")
    assert one_minute.num_rows == 240 and one_minute.column("ts")[0].as_py() == DAY + timedelta(
        hours=14
    )
    assert not list((tmp_path / "out").rglob(".*"))  # no temporary file left


@dg.asset(partitions_def=DAILY, ins={"quotes": dg.AssetIn(key=QUOTES.key)})
def quote_counts(quotes: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in quotes.groupby("symbol").size().items()}


@dg.asset(
    partitions_def=dg.HourlyPartitionsDefinition("2024-01-01-00:00"),
    ins={"bars": dg.AssetIn(key=ROLLUP_KEYS["5m"], metadata={"symbols": ["msft"], "as": "arrow"})},
)
def msft_hour(bars: object) -> int:
    import pyarrow as pa

    assert isinstance(bars, pa.Table)
    assert set(bars.column("symbol").to_pylist()) == {"MSFT"}
    return bars.num_rows


@dg.asset(ins={"quotes": dg.AssetIn(key=QUOTES.key)})
def all_quotes(quotes: pd.DataFrame) -> int:
    return len(quotes)


def test_io_manager_hands_partitions_to_downstream_assets(
    store_dsn: str, resources: dict[str, object], instance: dg.DagsterInstance
) -> None:
    quotes = [
        Quote(s, DAY + timedelta(hours=h, seconds=i), bid=1.0, ask=1.1)
        for s in ("AAPL", "MSFT")
        for h in (0, 23, 24)  # the day's first and last hours, and the next day
        for i in range(10 if s == "AAPL" else 5)
    ]
    asyncio.run(load_and_roll_up(store_dsn, five_second_bars(), quotes))
    assets = [*RAW_ASSETS, quote_counts, msft_hour, all_quotes]
    assets += list(build_rollup_defs(SETTINGS).assets or [])
    day = dg.materialize(
        assets,
        selection=[quote_counts.key],
        partition_key="2024-01-03",
        resources=resources,
        instance=instance,
    )
    assert day.output_for_node("quote_counts") == {"AAPL": 20, "MSFT": 10}  # only that day
    hour = dg.materialize(
        assets,
        selection=[msft_hour.key],
        partition_key="2024-01-03-15:00",
        resources=resources,
        instance=instance,
    )
    assert hour.output_for_node("msft_hour") == 12  # MSFT's twelve 5m bars of that hour
    # an unpartitioned run has no window: the raw table is not loaded whole
    unbounded = dg.materialize(
        assets,
        selection=[all_quotes.key],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert not unbounded.success
    (failure,) = [e for e in unbounded.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "mdp/quotes is not partitioned and this run has no time-window partition" in str(
        failure.step_failure_data.error
    )


def test_io_manager_refuses_to_store_outputs_and_unknown_keys(store_dsn: str) -> None:
    manager = MdpIOManager()
    context = dg.build_output_context(asset_key=ROLLUP_KEYS["1m"])
    manager.handle_output(context, None)  # a MaterializeResult without a value: nothing to do
    with pytest.raises(TypeError, match="does not store outputs"):
        manager.handle_output(context, pd.DataFrame())
    assert table_of(ROLLUP_KEYS["1h"]) == ("bars", "1h")
    assert table_of(QUOTES.key) == ("quotes", None)
    with pytest.raises(ValueError, match=r"loads mdp's tables .* not 'mdp/health'"):
        table_of(dg.AssetKey(["mdp", "health"]))
    with pytest.raises(ValueError, match=r"not 'mdp/bars_7m'"):
        table_of(dg.AssetKey(["mdp", "bars_7m"]))
