"""The soak, short (about a minute): the same code as ``make soak``, with one fault of each
main kind, asserting the accounting only (no timing thresholds).

Runs the simulated gateway, a dedicated embedded PostgreSQL (which it kills and restarts),
two in-process pipelines (bars, quotes) and two ``mdp stream`` children (bars, quotes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks.soak import SoakConfig, soak

FAULTS = {
    "gateway_restart": 1,  # refused connections, then reconnect + backfill
    "lost_1101": 1,  # 1100 -> 1101: resubscribe + backfill
    "lost_1102": 1,  # 1100 -> 1102: subscriptions kept, the missed bars backfilled
    "db_restart": 1,  # immediate stop: in-process streams spool to the DLQ, replayed at the end
    "poison": 1,  # rows breaking CHECKs: dead-lettered, quarantined by the replay
    "sigterm": 1,  # the mdp stream children drain, exit 0 and are restarted
    "db_freeze_sigterm": 1,  # a quotes child SIGTERMed in a frozen database: still balanced
}


@pytest.mark.soak
@pytest.mark.timeout(240)
async def test_short_soak_accounts_for_every_record(tmp_path: Path) -> None:
    config = SoakConfig(
        minutes=1.0,
        seed=11,
        faults=FAULTS,
        overlap=False,  # one fault at a time: each code path is exercised on its own
        json_path=tmp_path / "soak.json",
        log_path=tmp_path / "soak.log",
    )
    async with asyncio.timeout(230):
        result = await soak(config)

    # every invariant (conservation per run, no duplicates, no missing bars, poison
    # isolated, DLQ replayed, every received record stored, recovery after each fault)
    assert not result.errors, result.text
    assert [c for c in result.checks if not c.ok] == [], result.text
    assert sorted(e.kind for e in result.timeline) == sorted(FAULTS)
    assert (tmp_path / "soak.json").exists()

    streams = {a.name: a for a in result.accounts}
    assert set(streams) == {"soak-bars", "soak-quotes", "soak-cli-bars", "soak-cli-quotes"}
    for a in streams.values():  # received: real records; poison rows were pushed besides
        assert a.rows > 0 and a.unknown_bars == a.unknown_quotes == 0
        assert a.received + a.poison == a.committed + a.dead_lettered + a.dropped
    for name in ("soak-bars", "soak-quotes"):  # in-process: poison pushed, all isolated
        a = streams[name]
        assert a.poison > 0
        assert a.dlq.quarantined_poison == a.poison and a.poison_rows_in_table == 0
        assert a.keys_missing == 0 and a.keys_extra == 0 and a.rows_differing == 0
        assert a.source["reconnects"] >= 1  # the gateway restart
    assert streams["soak-bars"].source["resubscribes"] >= 2  # 1101, and 1102 (backfill)
    assert streams["soak-quotes"].source["resubscribes"] >= 1  # 1101 (1102 keeps quotes)
    # the database restart put real records through the DLQ, and the replay stored them
    assert sum(streams[n].dlq.replayed for n in ("soak-bars", "soak-quotes")) > 0
    for name, ends in (  # SIGTERM (in a frozen database too), drained, restarted
        ("soak-cli-bars", ["sigterm", "stopped"]),
        ("soak-cli-quotes", ["sigterm", "sigterm in a frozen database", "stopped"]),
    ):
        runs = streams[name].runs
        assert sorted(r["ended"] for r in runs) == sorted(ends)
        assert all(r["exit_code"] == 0 and r["balanced"] for r in runs)
    for name in ("soak-bars", "soak-cli-bars"):
        a = streams[name]
        assert a.expected_bars > 0 and a.missing_bars == 0 and a.mismatched_bars == 0
