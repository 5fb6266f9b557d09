"""A streams.yaml entry with ``sessions`` run by the Dagster stream op: one daily bar per
NYSE session from real SPY minutes, reported under its own asset (not the UTC-day rollup
``mdp/bars_1d``), with the bars between sessions counted by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from mdp_dagster.rollups import ROLLUP_KEYS
from tests.dagster.helpers import metadata_values, observations, run_stream, sql_value

SPY = Path(__file__).resolve().parents[2] / "data" / "SPY_1min_2011-01.csv"


def test_a_session_stream_reports_its_own_asset_and_outside_session_drops(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
) -> None:
    write_streams(
        f"""
        streams:
          - name: spy_sessions
            provider: replay
            mode: bars
            resolution: 1d
            sessions: XNYS
            symbols: [SPY]
            provider_options: {{path: "{SPY}"}}
        """
    )
    result = run_stream(instance, resources, stream="spy_sessions", max_seconds=120.0)
    assert result.success
    last = observations(instance, result.run_id)[-1]
    assert last.asset_key == dg.AssetKey(["mdp", "bars_1d_xnys"]) != ROLLUP_KEYS["1d"]
    final = metadata_values(last)
    assert final["state"] == "finished" and final["balanced"] is True
    assert (final["received"], final["committed"]) == (14_180, 20)
    dropped = final["dropped_by_policy"]
    assert dropped["outside_session"] > 0
    assert final["received"] == final["committed"] + sum(dropped.values())
    assert sql_value(store_dsn, "SELECT count(*) FROM mdp.bars WHERE resolution = '1d'") == 20
