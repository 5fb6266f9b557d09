"""Smoke tests of the benchmarks' measuring code, on tiny inputs (no timing assertions).

They run the same functions ``python -m benchmarks`` does (latency run, stalled-sink run,
SQL vs pandas rollup, the report), against the real embedded PostgreSQL, in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from benchmarks import (
    bench_backfill,
    bench_import,
    bench_latency,
    bench_memory,
    bench_operators,
    bench_read,
    bench_rollups,
    bench_store,
)
from benchmarks.__main__ import BENCHMARKS, render, section, summary
from benchmarks.common import RESULTS_DIR, markdown_table, percentile
from mdp_core.coordinator import CoordinatorSettings
from mdp_core.store.database import Database


async def test_latency_run_measures_every_quote_of_the_window(fresh_dsn: str) -> None:
    settings = CoordinatorSettings(capacity=2000, workers=2, batch_size=200, flush_interval=0.02)
    async with asyncio.timeout(60), Database.connect(fresh_dsn, max_size=4) as db:
        r = await bench_latency.measure(db, 2000, duration=0.6, warmup=0.2, settings=settings)
    assert r.balanced  # everything emitted was committed, nothing dead-lettered or dropped
    assert r.samples > 0
    assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms <= r.max_ms


async def test_stalled_sink_keeps_buffers_within_capacities(fresh_dsn: str) -> None:
    async with asyncio.timeout(60), Database.connect(fresh_dsn, max_size=2):
        pass  # create the schema
    async with asyncio.timeout(60):
        r = await bench_memory.child_run(fresh_dsn, stall=1.0, warmup=0.5, recover=0.5)
    s = bench_memory.SETTINGS
    assert r["balanced"]  # emitted == committed + dead-lettered + dropped == rows in the table
    assert r["committed"] > 0
    # only the writes already past the stalled sink's gate can commit during the stall
    assert r["committed_during_stall"] <= s.workers * s.batch_size
    assert r["max_channel_depth"] <= bench_memory.CHANNEL_CAPACITY
    assert r["max_queue_depth"] <= s.capacity
    assert r["max_in_flight"] <= s.workers * s.batch_size


async def test_sql_and_pandas_rollups_agree(fresh_dsn: str) -> None:
    async with asyncio.timeout(60), Database.connect(fresh_dsn, max_size=3) as db:
        rows, _ = await bench_rollups.load(db, 3)
        _, bars = await bench_rollups.run_sql(db)
        await bench_rollups._reset(db)
        _, frame = await bench_rollups.run_pandas(db)
        await bench_rollups._reset(db)
        await bench_rollups.run_sql(db)
        check = await bench_rollups.compare(db, frame)
    assert rows == 3 * bench_rollups.BARS_PER_SYMBOL
    assert bars == 3 * bench_rollups.BARS_PER_SYMBOL // 12  # 12 five-second bars a minute
    assert check["equal"], check


async def test_read_paths_agree(fresh_dsn: str, tmp_path: Path) -> None:
    """read_bars, the raw COPY of its query, fetch -> DataFrame and the Parquet export hold
    the same rows (what bench_read checks, on 1,200 bars)."""
    async with asyncio.timeout(60), Database.connect(fresh_dsn, max_size=2) as db:
        rows, _ = await bench_read.load(db, 3, 400)
        end = bench_read._end(400)
        query = await bench_read.query_text(db, end)
        conn = await asyncpg.connect(db.dsn)
        try:
            _, chunks = await bench_read.measure_raw(conn, query)
            _, fetched = await bench_read.measure_fetch(conn, query)
        finally:
            await conn.close()
        _, frame = await asyncio.to_thread(bench_read.measure_read, db.dsn, end, "pandas")
        _, exported = await asyncio.to_thread(bench_read.measure_export, db.dsn, end, tmp_path)
    assert rows == len(frame) == bench_read.copy_rows(chunks) == exported.rows == 1200
    assert frame["vwap"].isna().sum() == 3 * 40  # one bar in ten without vwap
    assert bench_read.frames_equal(frame, fetched)
    assert bench_read.parquet_equal(tmp_path, frame)
    assert not bench_read.frames_equal(frame.iloc[::-1].reset_index(drop=True), fetched)


async def test_import_run_measures_raw_import_and_live_on_the_same_bars(
    fresh_dsn: str, tmp_path: Path
) -> None:
    rows = bench_import.build_bars(2_000)
    path = tmp_path / "bars_1min.csv"
    bench_import.write_csv(rows, path)
    async with asyncio.timeout(90), Database.connect(fresh_dsn, max_size=3) as db:
        await db.ensure_partitions("bars", {bench_import.START.date()})
        # each measurement checks that every bar was stored
        assert await bench_import.measure_raw(db, rows, 500, 2) > 0
        assert await bench_import.measure_raw(db, rows, 500, 2, "direct") > 0
        assert await bench_import.measure_import(db, path, len(rows)) > 0
        stored = [tuple(r) for r in await db.pool.fetch(bench_import.STORED_SQL)]
        assert await bench_import.measure_live(db, path, len(rows)) > 0
        assert [tuple(r) for r in await db.pool.fetch(bench_import.STORED_SQL)] == stored
    assert stored == sorted(row[:8] for row in rows)


async def test_store_paths_write_every_row_once(fresh_dsn: str) -> None:
    """Both raw paths, the coordinator on new and on duplicate rows (adaptive and held on
    the idempotent path) and the profile: each measurement checks the table's row count and
    that duplicates added nothing (``measure_coordinator`` raises otherwise)."""
    quotes = bench_store.build_quotes(3_000)
    rows = bench_store.QuotesSink.rows(quotes)
    async with asyncio.timeout(120), Database.connect(fresh_dsn, max_size=3) as db:
        await bench_store.QuotesSink(db).write(quotes[:10])
        for path in bench_store.RAW_PATHS:
            assert await bench_store.measure_raw(db, rows, 1_000, 2, path) > 0
        r = await bench_store._coordinator_round(db, quotes, rows, 1_000, 2)
        assert set(r) == {"new", "dup", "new_before", "dup_before", "raw"}
        assert all(rate > 0 for rate in r.values())
        prof = await bench_store.profile(db, quotes, 1_000, 1)
    ns = prof["ns_per_record"]
    assert {key for key, _ in bench_store.PROFILE_STAGES} == set(ns)
    assert all(v > 0 for v in ns.values()) and prof["loop_ceiling_rows_per_s"] > 0


async def test_backfill_run_stores_the_trading_minutes_at_ibs_pace(fresh_dsn: str) -> None:
    from datetime import UTC, datetime

    from mdp_core.gateway import SimulatedGateway

    scale = 0.001  # IB's windows x 0.001, on both sides, as the benchmark does
    start, end = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC)
    async with (
        asyncio.timeout(60),
        SimulatedGateway(
            ["AAPL", "MSFT"], port=0, start=datetime(2024, 2, 1, tzinfo=UTC),
            history_pacing_scale=scale,
        ) as gw,
        Database.connect(fresh_dsn, max_size=4) as db,
    ):  # fmt: skip
        r = await bench_backfill.measure(gw.port, db, start, end, scale, ["AAPL", "MSFT"])
    assert r["rows_ok"] and r["balanced"] and r["pacing_violations"] == 0 and r["failed"] == 0
    assert r["requests"] == 2 * 3 and r["bars"] == 2 * 3 * 390  # a request per session


def test_report_renders_every_benchmark_from_its_figures() -> None:
    """Each module renders its section, and the summary judges every target, from the
    figures of the last full run (``benchmarks/results/<name>.json``)."""
    entries = {
        b.name: {
            "status": "ok",
            "wall_s": 1.0,
            "result": json.loads((RESULTS_DIR / f"{b.name}.json").read_text()),
        }
        for b in BENCHMARKS
    }
    for name, entry in entries.items():
        lines = section(name, entry["result"])
        assert lines[0].startswith("| "), (name, lines)  # a table, not "could not render"
        assert lines[-1].endswith("."), (name, lines)
    rows = summary(entries)
    assert len(rows) == 14 and all(row["result"] in ("PASS", "FAIL") for row in rows), rows
    ibkr = entries["ibkr"]["result"]
    (headline,) = [row for row in rows if row["benchmark"] == "ibkr"]
    assert headline["result"] == ("PASS" if ibkr["met_target"] else "FAIL")
    assert f"{ibkr['quotes_per_s_50_symbols']:,.0f} quotes/s" in headline["measured"]


def test_edge_stages_pass_every_event_and_pair_up() -> None:
    """The edge's paired measurement runs the two channel stages on the same events; the
    edge stage hands every event on (counted) and the chain makes its bars either way."""
    events = bench_operators.build_events(3_000)
    assert asyncio.run(bench_operators.run_channel(events)) == 3_000
    assert asyncio.run(bench_operators.run_channel_edge(events)) == 3_000
    assert asyncio.run(bench_operators.run_chain_edge(events)) == bench_operators.SYMBOLS
    assert len(bench_operators._edge_cost(events, 4)) == 4


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)


def test_report_names_missing_benchmarks() -> None:
    entries: dict[str, dict[str, Any]] = {
        b.name: {"status": "not available", "wall_s": 0.0, "result": None} for b in BENCHMARKS
    }
    rows = summary(entries)
    assert rows and all(row["result"] == "n/a" for row in rows)
    report = {
        "command": "python -m benchmarks",
        "date": "2024-01-02T00:00:00+00:00",
        "partial": True,
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "ram_gib": 1.0,
            "os": "os",
            "python": "3.11",
            "load_average": [0.0, 0.0, 0.0],
        },
        "load_average_end": [0.0, 0.0, 0.0],
        "wall_s": 1.0,
        "summary": rows,
        "benchmarks": entries,
    }
    text = render(report)
    assert "not available" in text
    assert markdown_table(("a", "b"), [("x", "1")]).splitlines()[1] == "|---|--:|"
