"""Rollup assets (``bars_1m``, ``bars_5m``, ``bars_1h``, ``bars_1d``) and the new-data sensor.

Each rollup is computed in one SQL statement (``mdp_core.store.rollups.rollup_bars``) from
the 5-second bars, straight from the source rather than chained (1m -> 5m -> 1h): every
rollup is then exact for its own windows, independent of the others' schedule, and a late
5-second bar is fixed by re-materializing just the partitions that cover it.

Partitions (UTC): hourly for 1m, 5m and 1h (an hour's bars appear about an hour after it,
not a day); daily for 1d. The first partition is ``MDP_ROLLUP_START`` (a date), by default
seven days before the code location loaded, so the UI is not flooded with empty history.
A UI backfill over a range runs as one run and one SQL over the whole range
(``BackfillPolicy.single_run``); re-running a partition is idempotent.

The sensor ``rollups_new_data`` requests each partition once, when its window has closed
(plus ``MDP_ROLLUP_GRACE_SECONDS``) and it holds 5-second bars; see ``build_rollup_sensor``.
A closed window without 5-second bars (a night, a weekend) is not rolled up (nothing to
write): the sensor records an observation of that partition instead (``rows: 0``), which
is what the freshness checks accept for it.
"""

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from mdp_core.dagster_names import KIND_TAG
from mdp_core.settings import RollupSettings
from mdp_core.store.database import Database
from mdp_core.store.rollups import (
    RollupResult,
    SymbolSummary,
    rollup_bars,
    summarize_bars,
    windows_with_bars,
)
from mdp_dagster.assets import BARS_5S
from mdp_dagster.io_manager import IO_MANAGER_KEY
from mdp_dagster.resources import StoreResource
from mdp_dagster.rollup_checks import (
    build_freshness_checks,
    partition_check_keys,
    partition_checks,
)
from mdp_dagster.tables import BARS_TABLE, table_metadata

__all__ = [
    "GROUP",
    "ROLLUP_KEYS",
    "build_rollup_defs",
    "sparkline",
]

GROUP = "rollups"
SOURCE_RESOLUTION = "5s"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: resolution -> partition length (UTC windows)
PARTITION_LENGTH: dict[str, timedelta] = {"1m": HOUR, "5m": HOUR, "1h": HOUR, "1d": DAY}
ROLLUP_KEYS: dict[str, dg.AssetKey] = {
    res: dg.AssetKey(["mdp", f"bars_{res}"]) for res in PARTITION_LENGTH
}
SYMBOLS_LISTED = 50  # symbols named in the metadata; the rest are counted
PREVIEW_SYMBOLS = 20  # rows of the per-symbol summary table
RUN_TAGS = {KIND_TAG: "rollup"}
RANGE_START_TAG = "dagster/asset_partition_range_start"  # a run over a partition range
RANGE_END_TAG = "dagster/asset_partition_range_end"
EMPTY_CURSOR = "{} empty"  # cursor key: the newest empty window observed for an asset

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


# -- metadata -------------------------------------------------------------------------------

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """A one-line chart of ``values`` with block characters (flat input: a flat line)."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi == lo:
        return _BLOCKS[3] * len(values)
    top = len(_BLOCKS) - 1
    return "".join(_BLOCKS[round((v - lo) / (hi - lo) * top)] for v in values)


def _price(value: float) -> str:
    return f"{value:,.4f}"


def _summary_markdown(resolution: str, summary: list[SymbolSummary], total: int) -> str:
    if not summary:
        return f"No {resolution} bars in this range (no 5-second bars to roll up)."
    lines = [
        f"| symbol | {resolution} bars | open | high | low | close | volume | latest closes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s.symbol} | {s.bars} | {_price(s.open)} | {_price(s.high)} | {_price(s.low)} "
            f"| {_price(s.close)} | {s.volume:,.0f} | `{sparkline(s.closes)}` |"
        )
    if total > len(summary):
        lines.append(f"\n… and {total - len(summary)} more symbols.")
    return "\n".join(lines)


def _symbols_text(symbols: Sequence[str]) -> str:
    shown = ", ".join(symbols[:SYMBOLS_LISTED])
    more = len(symbols) - SYMBOLS_LISTED
    return f"{shown} … (+{more} more)" if more > 0 else shown


def rollup_metadata(
    result: RollupResult, summary: list[SymbolSummary]
) -> dict[str, dg.MetadataValue]:
    """What a person wants to see about one rollup materialization."""
    meta: dict[str, dg.MetadataValue] = {
        "dagster/row_count": dg.MetadataValue.int(result.rows),
        "rows": dg.MetadataValue.int(result.rows),
        "written": dg.MetadataValue.int(result.written),
        "symbols_count": dg.MetadataValue.int(len(result.symbols)),
        "symbols": dg.MetadataValue.text(_symbols_text(result.symbols)),
        "range_start": dg.MetadataValue.timestamp(result.start),
        "range_end": dg.MetadataValue.timestamp(result.end),
        "summary": dg.MetadataValue.md(
            _summary_markdown(result.resolution, summary, len(result.symbols))
        ),
    }
    if result.first_ts is not None and result.last_ts is not None:
        meta["first_bar"] = dg.MetadataValue.timestamp(result.first_ts)
        meta["last_bar"] = dg.MetadataValue.timestamp(result.last_ts)
    return meta


# -- assets ---------------------------------------------------------------------------------


def _partitions(length: timedelta, first: date) -> dg.TimeWindowPartitionsDefinition:
    if length == HOUR:
        return dg.HourlyPartitionsDefinition(start_date=f"{first:%Y-%m-%d}-00:00")
    return dg.DailyPartitionsDefinition(start_date=f"{first:%Y-%m-%d}")


def _rollup_asset(
    resolution: str, partitions_def: dg.TimeWindowPartitionsDefinition
) -> dg.AssetsDefinition:
    def _rollup(context: AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
        window = context.partition_time_window

        async def work(db: Database) -> tuple[RollupResult, list[SymbolSummary]]:
            result = await rollup_bars(
                db, resolution, window.start, window.end, source_resolution=SOURCE_RESOLUTION
            )
            summary = await summarize_bars(
                db, resolution, result.start, result.end, limit=PREVIEW_SYMBOLS
            )
            return result, summary

        result, summary = store.run(work)
        context.log.info(
            f"{resolution} rollup of [{result.start.isoformat()}, {result.end.isoformat()}): "
            f"{result.rows} bars for {len(result.symbols)} symbols, {result.written} written"
        )
        return dg.MaterializeResult(metadata=rollup_metadata(result, summary))

    with warnings.catch_warnings():
        # backfill_policy is marked beta in 1.13; it is what makes a UI backfill one run
        # and one SQL over the whole range, so keep it and keep the load log quiet.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            key=ROLLUP_KEYS[resolution],
            deps=[BARS_5S],
            partitions_def=partitions_def,
            backfill_policy=dg.BackfillPolicy.single_run(),
            group_name=GROUP,
            kinds={"postgres", "sql"},
            pool="mdp_rollups",
            io_manager_key=IO_MANAGER_KEY,  # your assets can take these bars as inputs
            description=(
                f"{resolution} OHLCV bars (mdp.bars, resolution '{resolution}') rolled up in "
                "SQL from the 5-second bars: epoch-aligned UTC windows, first open / last "
                "close, max high, min low, summed volume and trade count, volume-weighted "
                "vwap. Idempotent upsert; re-materialize a partition after late data."
            ),
            metadata={"table": BARS_TABLE, "resolution": resolution, **table_metadata(BARS_TABLE)},
        )(_rollup)


# -- sensor ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rollup:
    resolution: str
    asset: dg.AssetsDefinition
    partitions_def: dg.TimeWindowPartitionsDefinition
    length: timedelta
    job_name: str

    @property
    def name(self) -> str:
        return self.asset.key.to_user_string()

    def partition_key(self, start: datetime) -> str:
        return start.astimezone(UTC).strftime(self.partitions_def.fmt)


def _ceil(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + -((epoch - t) // step) * step


def _closed_windows(
    after: datetime, closed_until: datetime, step: timedelta, limit: int
) -> list[datetime]:
    """Starts of the windows ``[s, s + step)`` with ``s >= after`` and ``s + step <=
    closed_until``, oldest first, at most ``limit``."""
    out: list[datetime] = []
    s = _ceil(after, step)
    while s + step <= closed_until and len(out) < limit:
        out.append(s)
        s += step
    return out


def _ranges(
    due: dict[tuple[str, datetime], list[_Rollup]],
) -> list[tuple[str, list[_Rollup], list[datetime]]]:
    """Group due partitions into runs: consecutive windows of one job due for the same
    assets share a run (so a backlog is one SQL per asset, not one run per hour)."""
    out: list[tuple[str, list[_Rollup], list[datetime]]] = []
    for job, start in sorted(due):
        group = due[(job, start)]
        if out:
            last_job, last_group, starts = out[-1]
            if last_job == job and last_group == group and starts[-1] + group[0].length == start:
                starts.append(start)
                continue
        out.append((job, group, [start]))
    return out


def _run_request(job: str, group: list[_Rollup], starts: list[datetime]) -> dg.RunRequest:
    first, last = group[0].partition_key(starts[0]), group[0].partition_key(starts[-1])
    assets = "+".join(r.resolution for r in group)
    selection = [r.asset.key for r in group]
    checks = partition_check_keys(selection)
    if first == last:
        return dg.RunRequest(
            run_key=f"{first}:{assets}",
            job_name=job,
            asset_selection=selection,
            asset_check_keys=checks,
            partition_key=first,
            tags=RUN_TAGS,
        )
    return dg.RunRequest(  # a partition range: one run (the assets' single-run backfill policy)
        run_key=f"{first}..{last}:{assets}",
        job_name=job,
        asset_selection=selection,
        asset_check_keys=checks,
        tags={**RUN_TAGS, RANGE_START_TAG: first, RANGE_END_TAG: last},
    )


def _empty_windows(
    r: _Rollup,
    closed: list[datetime],
    with_data: set[datetime],
    cursor: dict[str, str],
    now: datetime,
) -> list[dg.AssetObservation]:
    """Observations of the two newest ``closed`` windows of ``r`` that hold no 5-second bars
    and were not observed yet (``cursor`` remembers the newest observed). The freshness
    check expects one of those two: the older one until its deadline, minutes after the
    newer one closed."""
    seen = EMPTY_CURSOR.format(r.name)
    out: list[dg.AssetObservation] = []
    for start in closed[-2:]:
        if start in with_data or (seen in cursor and start <= datetime.fromisoformat(cursor[seen])):
            continue
        cursor[seen] = start.isoformat()
        out.append(
            dg.AssetObservation(
                asset_key=r.asset.key,
                partition=r.partition_key(start),
                description="The window closed without 5-second bars: nothing to roll up.",
                metadata={
                    "rows": dg.MetadataValue.int(0),
                    "dagster/last_updated_timestamp": dg.MetadataValue.timestamp(now),
                },
            )
        )
    return out


def build_rollup_sensor(
    rollups: Sequence[_Rollup],
    jobs: Sequence[Any],  # what dg.define_asset_job returns
    settings: RollupSettings,
    clock: Clock = _utc_now,
) -> dg.SensorDefinition:
    """The new-data sensor.

    Each tick it requests, per rollup asset, exactly the partitions whose window has closed
    (``grace_seconds`` ago), that hold 5-second bars, and that lie after the last partition
    it requested for that asset (the cursor, per asset). So a partition is never requested
    twice (its run key, partitions + assets, makes a duplicate impossible anyway) and an open
    window never is. Assets due for the same partitions share a run, and consecutive due
    partitions (a backlog after downtime) form one ranged run. Windows older than
    ``lookback_hours`` are left to UI backfills; a window that was empty when the sensor
    passed it, or gets late data, is re-materialized by hand (idempotent). Empty windows
    are observed (``_empty_windows``); the cursor stays, so later bars still roll up."""
    grace = timedelta(seconds=settings.grace_seconds)
    lookback = timedelta(hours=settings.lookback_hours)

    @dg.sensor(
        name="rollups_new_data",
        jobs=list(jobs),
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Rolls up each closed window of 5-second bars once: requests the "
        "partitions of bars_1m/5m/1h/1d whose window ended (plus a grace period) and has data.",
    )
    def rollups_new_data(
        context: dg.SensorEvaluationContext, store: StoreResource
    ) -> dg.SensorResult | dg.SkipReason:
        now = clock()
        closed_until = now - grace
        cursor: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        candidates: dict[str, list[datetime]] = {}
        for r in rollups:
            after = max(now - lookback, r.partitions_def.start)
            if r.name in cursor:
                after = max(after, datetime.fromisoformat(cursor[r.name]))
            candidates[r.name] = _closed_windows(after, closed_until, r.length, 10_000)

        lengths = {r.length for r in rollups}

        async def probe(db: Database) -> dict[timedelta, set[datetime]]:
            found: dict[timedelta, set[datetime]] = {}
            for length in lengths:
                starts = sorted(
                    {s for r in rollups if r.length == length for s in candidates[r.name]}
                )
                found[length] = set(await windows_with_bars(db, SOURCE_RESOLUTION, starts, length))
            return found

        with_data = store.run(probe) if any(candidates.values()) else {}
        due: dict[tuple[str, datetime], list[_Rollup]] = {}  # (job, window start) -> rollups
        empty: list[dg.AssetObservation] = []
        for r in rollups:
            data = with_data.get(r.length, set())
            starts = [s for s in candidates[r.name] if s in data]
            starts = starts[: settings.max_requests]
            for s in starts:
                due.setdefault((r.job_name, s), []).append(r)
            if starts:
                cursor[r.name] = (starts[-1] + r.length).isoformat()
            empty += _empty_windows(r, candidates[r.name], data, cursor, now)
        if not due and not empty:
            return dg.SkipReason(
                f"no closed window with new 5-second bars before {closed_until.isoformat()}"
            )
        requests = [_run_request(job, group, starts) for job, group, starts in _ranges(due)]
        if requests:
            context.log.info(
                f"requesting {len(requests)} rollup runs for {len(due)} partitions with new data"
            )
        return dg.SensorResult(
            run_requests=requests, asset_events=empty, cursor=json.dumps(cursor, sort_keys=True)
        )

    return rollups_new_data


# -- definitions ----------------------------------------------------------------------------


def build_rollup_defs(
    settings: RollupSettings | None = None, *, clock: Clock = _utc_now
) -> dg.Definitions:
    """The rollup assets, the checks of each partition written and their freshness checks,
    the jobs, the new-data sensor and the freshness sensor (resources: ``store``)."""
    settings = settings or RollupSettings()
    first = settings.first_day(clock())
    by_length = {length: _partitions(length, first) for length in (HOUR, DAY)}
    rollups: list[_Rollup] = []
    for resolution, length in PARTITION_LENGTH.items():
        partitions_def = by_length[length]
        job_name = "rollups_hourly" if length == HOUR else "rollups_daily"
        asset = _rollup_asset(resolution, partitions_def)
        rollups.append(_Rollup(resolution, asset, partitions_def, length, job_name))
    checks_of_job: dict[str, list[dg.AssetChecksDefinition]] = {}
    for r in rollups:
        checks_of_job.setdefault(r.job_name, []).extend(
            partition_checks(r.asset, r.resolution, r.partitions_def)
        )
    checks = [c for job_checks in checks_of_job.values() for c in job_checks]
    freshness, freshness_sensor = build_freshness_checks(
        [r.asset for r in rollups if r.length == HOUR],
        [r.asset for r in rollups if r.length == DAY],
        settings.grace_seconds,
    )
    jobs = [
        dg.define_asset_job(
            job_name,
            # the assets and the checks of their partitions (freshness has its own sensor)
            selection=dg.AssetSelection.assets(
                *[r.asset.key for r in rollups if r.job_name == job_name]
            ).without_checks()
            | dg.AssetSelection.checks(*checks_of_job[job_name]),
            executor_def=dg.in_process_executor,  # one SQL per asset: no process per step
            tags=RUN_TAGS,
            description="Rollups of one partition, and the checks of the partition just "
            "written (launched by the rollups_new_data sensor).",
        )
        for job_name in ("rollups_hourly", "rollups_daily")
    ]
    return dg.Definitions(
        assets=[r.asset for r in rollups],
        asset_checks=[*checks, *freshness],
        jobs=jobs,
        sensors=[build_rollup_sensor(rollups, jobs, settings, clock), freshness_sensor],
    )
