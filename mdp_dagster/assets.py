"""The raw tables written by the streams, declared as external (non-executable) assets.

Dagster does not compute these: the stream runs write them continuously and report
progress as ``AssetObservation`` events of these keys (see ``streaming.py``): counters to
read and plot, not new versions of the table. The rollups are requested by their sensor from
the rows themselves, and the ``fresh`` checks look at the newest row.
"""

from __future__ import annotations

import re

import dagster as dg

from mdp_dagster.io_manager import IO_MANAGER_KEY
from mdp_dagster.tables import BARS_TABLE, QUOTES_TABLE, table_metadata

__all__ = ["BARS_5S", "QUOTES", "RAW_ASSETS", "raw_asset_for"]

GROUP = "market_data"

QUOTES = dg.AssetSpec(
    ["mdp", "quotes"],
    description="Top-of-book quotes written live by the quote streams (table mdp.quotes).",
    group_name=GROUP,
    kinds={"postgres"},
    metadata={"table": QUOTES_TABLE, **table_metadata(QUOTES_TABLE)},
).with_io_manager_key(IO_MANAGER_KEY)  # loadable as an input of your own assets

BARS_5S = dg.AssetSpec(
    ["mdp", "bars_5s"],
    description="5-second OHLCV bars written live by the bar streams "
    "(table mdp.bars, resolution '5s').",
    group_name=GROUP,
    kinds={"postgres"},
    metadata={"table": BARS_TABLE, "resolution": "5s", **table_metadata(BARS_TABLE)},
).with_io_manager_key(IO_MANAGER_KEY)

RAW_ASSETS: list[dg.AssetSpec] = [QUOTES, BARS_5S]


def raw_asset_for(
    mode: str, resolution: str | None = None, sessions: str | None = None
) -> dg.AssetKey:
    """The asset a stream of ``mode`` ("quotes" or "bars") at ``resolution`` writes.

    Bars at resolutions other than 5s are still rows of ``mdp.bars``; they are reported
    under their own key ``mdp/bars_<resolution>`` (not declared here, so the UI shows them
    as an undeclared asset) rather than mislabelled as 5s bars. Daily bars per exchange
    session (``sessions``, a calendar name) are ``mdp/bars_1d_<calendar>`` (lower case,
    other characters than letters and digits as ``_``), apart from the UTC-day rollup
    ``mdp/bars_1d``.
    """
    if mode == "quotes":
        return QUOTES.key
    if mode == "bars":
        if resolution in (None, "5s"):
            return BARS_5S.key
        if sessions is not None:
            return dg.AssetKey(
                ["mdp", f"bars_{resolution}_{re.sub(r'[^a-z0-9]', '_', sessions.lower())}"]
            )
        return dg.AssetKey(["mdp", f"bars_{resolution}"])
    raise ValueError(f"unknown stream mode {mode!r}: expected 'quotes' or 'bars'")
