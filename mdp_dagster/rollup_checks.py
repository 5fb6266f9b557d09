"""Checks of the rollup partitions.

- Checks of the partition just written, run in the rollup's own run (they share its
  partitions): ``partition_ohlc_sane`` (every bar of the window is a sane OHLC bar) and
  ``partition_no_duplicates`` (no key twice). A single-run backfill checks its whole range.
- ``freshness_check`` (``dg.build_time_partition_freshness_checks``): the newest closed
  partition is materialized, or observed, by a deadline: ``deadline_minute`` past each
  hour for the hourly rollups, past midnight UTC for ``bars_1d``. Evaluated by the sensor
  ``rollups_freshness``; it warns (severity WARN) when the rollup sensor is stopped or
  behind. A window without 5-second bars is not rolled up (nothing to write): the rollup
  sensor observes that partition (``rows: 0``), which passes the check.

``matches_source`` (a late 5-second bar after the rollup) stays in the health job, which
looks at the last closed partitions again later (see ``health.py``).
"""

# No "from __future__ import annotations": Dagster reads the checks' annotations at runtime.

import math
import warnings
from typing import Any

import dagster as dg

from mdp_dagster.check_logic import check_duplicates, check_ohlc
from mdp_dagster.resources import StoreResource

__all__ = [
    "PARTITION_CHECKS",
    "build_freshness_checks",
    "deadline_minute",
    "partition_check_keys",
    "partition_checks",
]

PARTITION_CHECKS = ("partition_ohlc_sane", "partition_no_duplicates")


def partition_check_keys(keys: list[dg.AssetKey]) -> list[dg.AssetCheckKey]:
    """The keys of the partition checks of the rollup assets ``keys`` (what a rollup run
    executes besides the assets; their freshness checks have their own sensor)."""
    return [dg.AssetCheckKey(key, name) for key in keys for name in PARTITION_CHECKS]


def partition_checks(
    asset: dg.AssetsDefinition, resolution: str, partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    """The checks of ``asset``'s partition (or partition range) just written."""
    with warnings.catch_warnings():
        # partitioned asset checks are "preview" in 1.13; they are what checks exactly the
        # partition a run wrote, so keep them and keep the load log quiet
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return _partition_checks(asset, resolution, partitions_def)


def _partition_checks(
    asset: dg.AssetsDefinition, resolution: str, partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetChecksDefinition]:

    @dg.asset_check(
        asset=asset,
        name=PARTITION_CHECKS[0],
        partitions_def=partitions_def,
        description="Every bar of the partition just written has 0 < low <= open, close <= "
        "high and 0 <= volume.",
    )
    def ohlc(context: dg.AssetCheckExecutionContext, store: StoreResource) -> dg.AssetCheckResult:
        window = context.partition_time_window
        return store.run(lambda db: check_ohlc(db, resolution, window.start, window.end))

    @dg.asset_check(
        asset=asset,
        name=PARTITION_CHECKS[1],
        partitions_def=partitions_def,
        description="No two bars of the partition just written share (symbol, resolution, ts).",
    )
    def duplicates(
        context: dg.AssetCheckExecutionContext, store: StoreResource
    ) -> dg.AssetCheckResult:
        window = context.partition_time_window
        return store.run(
            lambda db: check_duplicates(db, "bars", resolution, window.start, window.end)
        )

    return [ohlc, duplicates]


def deadline_minute(grace_seconds: float) -> int:
    """Minutes past the end of a window by which its rollup is due: the sensor's grace,
    its interval (a minute) and five minutes of margin, at least ten."""
    return min(59, max(10, math.ceil(grace_seconds / 60) + 6))


def build_freshness_checks(
    hourly: list[Any], daily: list[Any], grace_seconds: float
) -> tuple[list[dg.AssetChecksDefinition], dg.SensorDefinition]:
    """Freshness checks of the rollups (``hourly``/``daily``: their assets) and their sensor."""
    minute = deadline_minute(grace_seconds)
    # Superseded in 1.13 by FreshnessPolicy, which judges any materialization of the asset;
    # these check that the newest closed *partition* is there, and report as asset checks.
    warnings.filterwarnings("ignore", category=dg.SupersessionWarning, module=__name__)
    checks = [
        *dg.build_time_partition_freshness_checks(assets=hourly, deadline_cron=f"{minute} * * * *"),
        *dg.build_time_partition_freshness_checks(assets=daily, deadline_cron=f"{minute} 0 * * *"),
    ]
    sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=checks,
        name="rollups_freshness",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    return checks, sensor
