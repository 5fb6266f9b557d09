"""Asset checks on the raw tables and the rollups, and the ``health`` asset.

Checks (each a small query over a recent window; thresholds from ``MDP_CHECK_*``):

- ``fresh`` (quotes, bars_5s): while the market is open, the newest row is at most
  ``freshness_minutes`` old. When the market is closed (or opened less than that ago) the
  check passes and says so. Market hours come from exchange_calendars (``calendar``,
  default XNYS; ``24/7`` for the simulated gateway, which trades around the clock).
- ``gaps`` (bars_5s): per symbol, the 5-second slots missing between consecutive bars in
  the last ``window_minutes`` and after its last bar up to now (a symbol that stopped
  getting bars), counting only open-market time; fails when a symbol misses more than
  ``gap_max_missing`` slots.
- ``ohlc_sane`` (bars_5s and each rollup): no bar with low > open/close, open/close > high,
  a non-positive or infinite price, or a negative volume.
- ``no_duplicates`` (quotes, bars_5s and each rollup): ``count(*)`` equals the number of
  distinct keys.
- ``dlq_depth`` (quotes, bars_5s): records of that kind waiting in the dead-letter spool
  at most ``dlq_max_depth``.
- ``matches_source`` (each rollup): the rollup rows of recent closed partitions still
  equal a recomputation from the 5-second bars (a late bar makes them stale: re-materialize
  the partitions listed in the metadata).

Raw-table checks look at the last ``window_minutes``; rollup checks at their last three
partitions (the checks of the partition a rollup run just wrote, and the rollups' freshness,
are in ``rollup_checks.py``). The ``health`` asset tabulates every stream of streams.yaml
(state by ``HeartbeatPolicy``, the supervisor's rule; rate, committed, dead-lettered, last
heartbeat, DLQ depth). The job ``mdp_health`` (the health asset and these checks, in one
process) runs on the schedule ``mdp_health_schedule`` (``MDP_CHECK_CRON``, default every 5
minutes, RUNNING by default).

This module holds the definitions; the checks' logic is ``check_logic.py``, their SQL
``check_sql.py``, and the markdown and tables they show ``rendering.py``. Nothing here reads
the environment at import: ``build_health_defs`` does, when the code location loads.
"""

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from mdp_core.dagster_names import KIND_TAG
from mdp_core.settings import CheckSettings, RollupSettings
from mdp_core.store.heartbeats import HeartbeatPolicy, latest_heartbeats
from mdp_core.streams import StreamsConfigError
from mdp_dagster.assets import BARS_5S, QUOTES
from mdp_dagster.check_logic import (
    check_dlq_depth,
    check_duplicates,
    check_freshness,
    check_gaps,
    check_matches_source,
    check_ohlc,
)
from mdp_dagster.rendering import health_metadata, health_rows
from mdp_dagster.resources import DlqResource, StoreResource
from mdp_dagster.rollups import PARTITION_LENGTH, ROLLUP_KEYS
from mdp_dagster.streaming import load_stream_specs

__all__ = ["HEALTH_KEY", "build_health_defs"]

HEALTH_KEY = dg.AssetKey(["mdp", "health"])
RUN_TAGS = {KIND_TAG: "health"}

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


# -- definitions ----------------------------------------------------------------------------

Span = Callable[[], tuple[datetime, datetime]]


def _fresh_check(spec: dg.AssetSpec, table: str, cfg: CheckSettings, clock: Clock) -> Any:
    @dg.asset_check(
        asset=spec.key,
        name="fresh",
        description=f"While the market ({cfg.calendar}) is open, the newest row is at most "
        f"{cfg.freshness_minutes:g} minutes old.",
    )
    def fresh(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_freshness(db, table, clock(), cfg))

    return fresh


def _gaps_check(cfg: CheckSettings, clock: Clock) -> Any:
    @dg.asset_check(
        asset=BARS_5S.key,
        name="gaps",
        description=f"Per symbol, at most {cfg.gap_max_missing} missing 5-second slots in the "
        f"last {cfg.window_minutes:g} minutes of open-market time.",
    )
    def gaps(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_gaps(db, clock(), cfg))

    return gaps


def _ohlc_check(key: dg.AssetKey, resolution: str, span: Span) -> Any:
    @dg.asset_check(
        asset=key,
        name="ohlc_sane",
        description="Every recent bar has 0 < low <= open, close <= high and 0 <= volume.",
    )
    def ohlc_sane(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_ohlc(db, resolution, *span()))

    return ohlc_sane


def _duplicates_check(key: dg.AssetKey, table: str, resolution: str | None, span: Span) -> Any:
    what = "(symbol, ts)" if table == "quotes" else "(symbol, resolution, ts)"

    @dg.asset_check(
        asset=key,
        name="no_duplicates",
        description=f"No two recent rows share a key {what}.",
    )
    def no_duplicates(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_duplicates(db, table, resolution, *span()))

    return no_duplicates


def _dlq_check(spec: dg.AssetSpec, kind: str, cfg: CheckSettings) -> Any:
    @dg.asset_check(
        asset=spec.key,
        name="dlq_depth",
        description=f"At most {cfg.dlq_max_depth} {kind} records wait in the dead-letter spool.",
    )
    def dlq_depth(dlq: DlqResource) -> dg.AssetCheckResult:
        queue = dlq.queue()
        quarantined = len(queue.list(kind=kind, quarantined=True))
        return check_dlq_depth(queue.list(kind=kind), quarantined, kind, cfg)

    return dlq_depth


def _matches_check(key: dg.AssetKey, resolution: str, span: Span) -> Any:
    @dg.asset_check(
        asset=key,
        name="matches_source",
        description="Rollup rows of the last three closed partitions equal a recomputation "
        "from the 5-second bars (a late source bar makes them stale).",
    )
    def matches_source(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_matches_source(db, resolution, *span()))

    return matches_source


def _health_asset(clock: Clock, policy: HeartbeatPolicy) -> dg.AssetsDefinition:
    @dg.asset(
        key=HEALTH_KEY,
        group_name="health",
        kinds={"postgres"},
        description="Every stream of streams.yaml: state (running / stale / stopped, from its "
        "last heartbeat), rate, committed, dead-lettered, last heartbeat, DLQ depth.",
    )
    def health(
        context: AssetExecutionContext, store: StoreResource, dlq: DlqResource
    ) -> dg.MaterializeResult:
        try:
            specs = load_stream_specs()
        except StreamsConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        queue = dlq.queue()
        pending = queue.list()
        heartbeats = store.run(lambda db: latest_heartbeats(db, [s.name for s in specs]))
        by_stream = Counter(r.stream for r in pending)
        rows = health_rows(specs, heartbeats, by_stream, clock(), policy)
        meta = health_metadata(rows, len(pending), queue.count(quarantined=True))
        context.log.info(
            f"{meta['streams_total']} streams: {meta['running']} running, {meta['stale']} "
            f"stale, {meta['stopped']} stopped; DLQ depth {len(pending)}"
        )
        return dg.MaterializeResult(metadata=meta)

    return health


def _last_closed_partitions(length: timedelta, grace: timedelta, clock: Clock) -> Span:
    """The last three partitions whose window closed ``grace`` ago (the rollup sensor has
    had its chance to roll them up)."""

    def span() -> tuple[datetime, datetime]:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        end = epoch + ((clock() - grace - epoch) // length) * length
        return end - 3 * length, end

    return span


def build_health_defs(
    settings: CheckSettings | None = None,
    *,
    clock: Clock = _utc_now,
    heartbeats: HeartbeatPolicy | None = None,
) -> dg.Definitions:
    """The checks, the health asset, their job and schedule (resources: ``store``, ``dlq``).

    ``heartbeats``: when a live stream's heartbeat is stale (default: the supervisor's
    policy). The market calendar is built by the first check that needs it
    (not here: every run worker imports the definitions); an unknown name fails the
    ``fresh`` and ``gaps`` checks with a ``ValueError`` naming it."""
    cfg = settings or CheckSettings()
    grace = timedelta(seconds=RollupSettings().grace_seconds)
    window = timedelta(minutes=cfg.window_minutes)

    def recent() -> tuple[datetime, datetime]:
        now = clock()
        return now - window, now

    checks = [
        _fresh_check(QUOTES, "quotes", cfg, clock),
        _duplicates_check(QUOTES.key, "quotes", None, recent),
        _dlq_check(QUOTES, "quote", cfg),
        _fresh_check(BARS_5S, "bars_5s", cfg, clock),
        _gaps_check(cfg, clock),
        _ohlc_check(BARS_5S.key, "5s", recent),
        _duplicates_check(BARS_5S.key, "bars", "5s", recent),
        _dlq_check(BARS_5S, "bar", cfg),
    ]
    for resolution, key in ROLLUP_KEYS.items():
        span = _last_closed_partitions(PARTITION_LENGTH[resolution], grace, clock)
        checks += [
            _ohlc_check(key, resolution, span),
            _duplicates_check(key, "bars", resolution, span),
            _matches_check(key, resolution, span),
        ]
    health = _health_asset(clock, heartbeats or HeartbeatPolicy())
    job = dg.define_asset_job(
        "mdp_health",
        selection=dg.AssetSelection.assets(health) | dg.AssetSelection.checks(*checks),
        executor_def=dg.in_process_executor,  # two dozen small queries: no process each
        tags=RUN_TAGS,
        description="The health asset and every asset check (scheduled).",
    )
    schedule = dg.ScheduleDefinition(
        name="mdp_health_schedule",
        job=job,
        cron_schedule=cfg.cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Materializes health and runs every asset check.",
    )
    return dg.Definitions(assets=[health], asset_checks=checks, jobs=[job], schedules=[schedule])
