"""The ``mdp/bars_history`` asset: IB's historical bars, one partition per UTC day, backfilled
from the UI for any date range (Materialize -> select partitions, or Backfill).

Each run is ``mdp_core.backfill.Backfill`` over its partitions' range (a range of partitions
is one run: one IB connection and one pacing budget): it asks IB only for what ``mdp.bars``
does not hold yet, at IB's pace, and writes through the WriteCoordinator. By default it
writes 5-second bars of regular trading hours for the symbols of the IBKR bar streams in
``streams.yaml``: the same rows the streams write, so the rollup assets (re-materialize their
partitions for the range) and the checks take them like streamed bars. Run config changes
the symbols, the resolution, all hours, whatToShow and the IB client id. The metadata shows
rows per symbol.

The first partition is ``MDP_HISTORY_START`` (a date), by default a year before the code
location loaded.
"""

import warnings
from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from mdp_core.backfill import Backfill, BackfillResult
from mdp_core.dagster_names import KIND_TAG
from mdp_core.providers.ibkr.pacing import PacingRules
from mdp_core.settings import HistorySettings, IBKRSettings
from mdp_core.store.database import Database
from mdp_dagster.resources import StoreResource
from mdp_dagster.streaming import load_stream_specs

__all__ = ["HISTORY_KEY", "HistoryConfig", "build_history_defs"]

HISTORY_KEY = dg.AssetKey(["mdp", "bars_history"])
GROUP = "market_data"
RUN_TAGS = {KIND_TAG: "history"}

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class HistoryConfig(dg.Config):
    """Run config of a history materialization (every field optional)."""

    symbols: list[str] = Field(
        default_factory=list,
        description="instrument ids (AAPL, EUR:CASH:IDEALPRO:USD, ES:CONTFUT:CME, ...); empty: "
        "the symbols of the enabled ibkr bar streams in streams.yaml",
    )
    resolution: str = Field("5s", description="bar size: 5s (what the streams write) ... 1d")
    all_hours: bool = Field(False, description="all hours, not only regular trading hours")
    what_to_show: str = Field("TRADES", description="TRADES, MIDPOINT, BID or ASK")
    client_id: int = Field(31, ge=0, description="IB API client id of the backfill")
    pacing_scale: float = Field(
        1.0, gt=0, description="multiply IB's pacing windows (only for a scaled simulated gateway)"
    )
    concurrency: int = Field(4, ge=1, le=50, description="requests in flight at once")


def stream_symbols() -> list[str]:
    """The symbols of the enabled ibkr bar streams of streams.yaml, in order, once each."""
    out: list[str] = []
    for spec in load_stream_specs():
        if spec.enabled and spec.provider == "ibkr" and spec.mode == "bars":
            out += [s for s in spec.symbols if s not in out]
    return out


def history_metadata(result: BackfillResult) -> dict[str, dg.MetadataValue]:
    """Rows per symbol and what it took."""
    h = result.coordinator
    lines = [
        "| symbol | rows committed | received | requests | empty | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result.symbols.values():
        name = r.symbol + (" (unknown to IB)" if r.unknown else "")
        lines.append(
            f"| {name} | {r.committed:,} | {r.received:,} | {r.requested} | {r.empty} | "
            f"{r.failed} |"
        )
    committed = h.committed if h is not None else 0
    return {
        "dagster/row_count": dg.MetadataValue.int(committed),
        "rows_per_symbol": dg.MetadataValue.md("\n".join(lines)),
        "rows": dg.MetadataValue.json({s: r.committed for s, r in result.symbols.items()}),
        "resolution": dg.MetadataValue.text(result.resolution),
        "range_start": dg.MetadataValue.timestamp(result.start),
        "range_end": dg.MetadataValue.timestamp(result.end),
        "requests": dg.MetadataValue.int(result.planned),
        "pacing_wait_seconds": dg.MetadataValue.float(round(result.waited, 1)),
        "pacing_violations": dg.MetadataValue.int(result.pacing_violations),
        "dead_lettered": dg.MetadataValue.int(h.dead_lettered if h is not None else 0),
    }


def _history_asset(partitions_def: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    def bars_history(
        context: AssetExecutionContext, config: HistoryConfig, store: StoreResource
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        symbols = config.symbols or stream_symbols()
        if not symbols:
            raise dg.Failure(
                "no symbols: set them in the run config (symbols: [AAPL, ...]) or add an "
                "enabled ibkr bars stream to streams.yaml"
            )
        job = Backfill(
            None,  # type: ignore[arg-type]  # bound to the store's database below
            symbols, window.start, window.end, config.resolution, rth=not config.all_hours,
            what_to_show=config.what_to_show.upper(),
            ibkr_settings=IBKRSettings(client_id=config.client_id),
            pacing=PacingRules().scaled(config.pacing_scale), concurrency=config.concurrency,
        )  # fmt: skip

        async def work(db: Database) -> BackfillResult:
            job.db = db
            return await job.run()

        context.log.info(
            f"history of {len(symbols)} symbol(s), {config.resolution} bars, "
            f"[{window.start.isoformat()}, {window.end.isoformat()})"
        )
        result = store.run(work)
        meta = history_metadata(result)
        for r in result.symbols.values():
            for error in r.errors:
                context.log.error(f"{r.symbol}: {error}")
        if result.failed or not result.balanced:
            raise dg.Failure(
                f"{result.failed} request(s) or symbol(s) failed (see the run log); the rows "
                "fetched are stored, and materializing again asks only for what is missing",
                metadata=meta,
            )
        context.log.info(
            f"{result.planned} request(s), {result.received:,} bars, waited "
            f"{result.waited:,.1f}s for IB's pacing"
        )
        return dg.MaterializeResult(metadata=meta)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy: see rollups.py
        return dg.asset(
            key=HISTORY_KEY,
            partitions_def=partitions_def,
            backfill_policy=dg.BackfillPolicy.single_run(),
            group_name=GROUP,
            kinds={"postgres", "python"},
            pool="mdp_history",
            op_tags=RUN_TAGS,
            description=(
                "Historical bars from IB (mdp.bars), one partition per UTC day: regular "
                "trading hours of the streams' symbols as 5-second bars by default, so the "
                "rollups and checks take them like streamed bars. A partition range is one "
                "run that asks only for what the table lacks, at IB's pacing."
            ),
            metadata={"table": "mdp.bars"},
        )(bars_history)


def build_history_defs(
    settings: HistorySettings | None = None, *, clock: Clock = _utc_now
) -> dg.Definitions:
    """The history asset (resources: ``store``)."""
    settings = settings or HistorySettings()
    partitions = dg.DailyPartitionsDefinition(start_date=f"{settings.first_day(clock()):%Y-%m-%d}")
    return dg.Definitions(assets=[_history_asset(partitions)])
