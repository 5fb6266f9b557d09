"""The Parquet export asset ``mdp/bars_parquet``: each UTC day's rollup bars as files.

Daily partitions (UTC, the same first day as the rollups), downstream of ``bars_1m``,
``bars_5m``, ``bars_1h`` and ``bars_1d``. Materializing a day writes, for each of those
resolutions, ``<dir>/bars/resolution=<r>/date=<day>/part-0.parquet`` with
``mdp_core.store.export.export_bars`` (written to a temporary name and renamed: a failed
run leaves no partial file; re-materializing a day after late data replaces its files
exactly). ``<dir>`` is the ``export`` resource's ``directory``, else ``$MDP_EXPORT_DIR``,
else ``$MDP_HOME/export``. The schedule ``bars_parquet_daily`` exports the previous day at
01:30 UTC, after its rollups ran (the rollup sensor requests a closed window within minutes).
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import dagster as dg
from dagster import AssetExecutionContext

from mdp_core.dagster_names import KIND_TAG
from mdp_core.settings import RollupSettings, get_settings
from mdp_core.store.export import ExportResult, export_bars
from mdp_dagster.resources import StoreResource
from mdp_dagster.rollups import ROLLUP_KEYS, Clock

__all__ = [
    "DAILY",
    "EXPORT_KEY",
    "ExportResource",
    "build_export_defs",
    "daily_partitions",
    "defs",
    "export_metadata",
]

EXPORT_KEY = dg.AssetKey(["mdp", "bars_parquet"])
GROUP = "exports"
JOB = "bars_parquet_job"


class ExportResource(dg.ConfigurableResource):
    """Where exports go and in which format: ``directory`` (default ``$MDP_EXPORT_DIR``, else
    ``$MDP_HOME/export``)."""

    directory: str | None = None
    format: Literal["parquet", "csv"] = "parquet"

    def root(self) -> Path:
        settings = get_settings()
        chosen = self.directory or settings.export_dir
        return Path(chosen).expanduser() if chosen else settings.home_dir / "export"


def export_metadata(root: Path, results: list[ExportResult]) -> dict[str, dg.MetadataValue]:
    """Files, rows (in all and per resolution), bytes and where, for the UI."""
    rows = sum(r.rows for r in results)
    lines = ["| resolution | rows | file | size |", "|---|---:|---|---:|"]
    for r in results:
        for day in r.days:
            where = f"`{day.path.relative_to(root)}`" if day.path else "(no rows: no file)"
            lines.append(f"| {r.resolution} | {day.rows:,} | {where} | {day.bytes:,} B |")
    meta: dict[str, dg.MetadataValue] = {
        "dagster/row_count": dg.MetadataValue.int(rows),
        "rows": dg.MetadataValue.int(rows),
        "files": dg.MetadataValue.int(sum(len(r.files) for r in results)),
        "bytes": dg.MetadataValue.int(sum(r.bytes for r in results)),
        "path": dg.MetadataValue.path(str(root / "bars")),
        "written": dg.MetadataValue.md("\n".join(lines)),
    }
    for r in results:
        meta[f"rows_{r.resolution}"] = dg.MetadataValue.int(r.rows)
    return meta


def daily_partitions(
    settings: RollupSettings | None = None, *, clock: Clock | None = None
) -> dg.DailyPartitionsDefinition:
    """UTC days from the rollups' first day (``MDP_ROLLUP_START``, else 7 days ago)."""
    settings = settings or RollupSettings()
    first = settings.first_day((clock or (lambda: datetime.now(UTC)))())
    return dg.DailyPartitionsDefinition(start_date=f"{first:%Y-%m-%d}")


def build_export_defs(
    settings: RollupSettings | None = None,
    *,
    clock: Clock | None = None,
    partitions: dg.DailyPartitionsDefinition | None = None,
) -> dg.Definitions:
    """The export asset, its job and its daily schedule (resources: ``store``, ``export``),
    on ``partitions`` (default: ``daily_partitions(settings, clock=clock)``)."""
    partitions = partitions or daily_partitions(settings, clock=clock)

    @dg.asset(
        key=EXPORT_KEY,
        deps=list(ROLLUP_KEYS.values()),
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"parquet"},
        description=(
            "The day's rollup bars (1m, 5m, 1h, 1d) as Hive-partitioned Parquet files: "
            "<dir>/bars/resolution=<r>/date=<day>/part-0.parquet, written atomically; "
            "re-materialize a day to replace its files."
        ),
    )
    def bars_parquet(
        context: AssetExecutionContext, store: StoreResource, export: ExportResource
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        root = export.root()
        dsn, fmt = store.dsn(), export.format
        results = [
            export_bars(root, None, window.start, window.end, res, format=fmt, dsn=dsn)
            for res in ROLLUP_KEYS
        ]
        for r in results:
            context.log.info(f"{r.resolution}: {r.summary()}")
        return dg.MaterializeResult(metadata=export_metadata(root, results))

    job = dg.define_asset_job(
        JOB,
        selection=[EXPORT_KEY],
        executor_def=dg.in_process_executor,
        tags={KIND_TAG: "export"},
        description="Export one UTC day of rollup bars to Parquet.",
    )
    schedule = dg.build_schedule_from_partitioned_job(
        job,
        name="bars_parquet_daily",
        hour_of_day=1,
        minute_of_hour=30,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Exports the previous UTC day at 01:30 UTC, after its rollups.",
    )
    return dg.Definitions(assets=[bars_parquet], jobs=[job], schedules=[schedule])


#: The partitions of ``mdp/bars_parquet``: give your own daily assets these, so that their
#: days line up with the rollups' partitions (which start on the same day).
DAILY = daily_partitions()
defs = build_export_defs(partitions=DAILY)
