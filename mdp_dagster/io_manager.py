"""``mdp_io_manager``: hands mdp's tables to your own assets as DataFrames.

The rollup assets (``mdp/bars_1m``, ``mdp/bars_5m``, ``mdp/bars_1h``, ``mdp/bars_1d``) and the
raw assets (``mdp/bars_5s``, ``mdp/quotes``) use this IO manager, so an asset of yours that
declares one of them as an input receives its rows for the partition being materialized::

    @dg.asset(partitions_def=DAILY, ins={"bars": dg.AssetIn(key=["mdp", "bars_1m"])})
    def daily_returns(bars: pd.DataFrame) -> pd.DataFrame: ...

What is loaded: the time window of the input's partitions (a daily asset downstream of the
hourly ``bars_1m`` gets its 24 hours, as Dagster maps them); for the unpartitioned raw
assets, the window of the run's own partition (an unpartitioned run gets an error instead
of a whole table). The rows come from ``read_bars`` / ``read_quotes`` (sorted by symbol then
ts, ``ts`` in UTC), all symbols unless the input says otherwise:
``dg.AssetIn(key=..., metadata={"symbols": ["AAPL", "MSFT"], "as": "arrow"})``.

mdp's tables are written by mdp (streams, rollups), never through this IO manager: storing
an output with it is refused.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mdp_core.models import parse_resolution
from mdp_core.store.read import read_bars, read_quotes
from mdp_dagster.resources import StoreResource

__all__ = ["IO_MANAGER_KEY", "MdpIOManager", "table_of"]

#: The resource key the mdp assets name as their IO manager.
IO_MANAGER_KEY = "mdp_io_manager"


def table_of(key: dg.AssetKey) -> tuple[str, str | None]:
    """(``"bars"``, resolution) for ``mdp/bars_<resolution>``, (``"quotes"``, None) for
    ``mdp/quotes``; ``ValueError`` for any other key."""
    path = key.path
    if len(path) == 2 and path[0] == "mdp":
        if path[1] == "quotes":
            return "quotes", None
        if path[1].startswith("bars_"):
            try:
                return "bars", parse_resolution(path[1].removeprefix("bars_"))
            except ValueError:
                pass
    raise ValueError(
        f"{IO_MANAGER_KEY} loads mdp's tables (mdp/quotes, mdp/bars_<resolution>), "
        f"not {key.to_user_string()!r}"
    )


class MdpIOManager(dg.ConfigurableIOManager):
    """Loads ``mdp/bars_<resolution>`` and ``mdp/quotes`` inputs from mdp's PostgreSQL as
    pandas DataFrames (or Arrow tables) for the partition's time window (module docstring).

    ``pg_dsn``: the DSN, as for the ``store`` resource (unset: ``MDP_PG_DSN``, else the
    embedded server); ``symbols``: the symbols loaded when an input does not name its own
    (``None``: all)."""

    pg_dsn: str | None = None
    symbols: list[str] | None = None

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return  # a MaterializeResult without a value: nothing to store
        raise TypeError(
            f"{IO_MANAGER_KEY} does not store outputs: mdp's tables are written by mdp; "
            f"give {context.asset_key.to_user_string()} another io_manager_key"
        )

    def load_input(self, context: dg.InputContext) -> Any:
        table, resolution = table_of(context.asset_key)
        if context.has_asset_partitions:
            window = context.asset_partitions_time_window
        else:
            try:
                window = context.step_context.partition_time_window
            except Exception:
                raise ValueError(
                    f"{context.asset_key.to_user_string()} is not partitioned and this run has "
                    "no time-window partition: give the asset that loads it a time-window "
                    "partitions_def (e.g. DailyPartitionsDefinition) so mdp knows which range "
                    "to read"
                ) from None
        meta = context.definition_metadata or {}
        symbols = meta.get("symbols", self.symbols)
        as_ = meta.get("as", "pandas")
        context.log.info(
            f"loading {context.asset_key.to_user_string()} for "
            f"[{window.start.isoformat()}, {window.end.isoformat()})"
        )
        dsn = StoreResource(pg_dsn=self.pg_dsn).dsn()
        if table == "quotes":
            return read_quotes(symbols, window.start, window.end, dsn=dsn, as_=as_)
        assert resolution is not None
        return read_bars(symbols, window.start, window.end, resolution, dsn=dsn, as_=as_)
