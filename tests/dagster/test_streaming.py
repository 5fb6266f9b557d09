"""The stream op run in process against the real embedded PostgreSQL: rows, progress
observations, the run log, a clean drain on interrupt, and its failure modes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import dagster as dg
import pytest

from mdp_dagster.assets import BARS_5S, QUOTES
from mdp_dagster.streaming import PipelineThread
from tests.dagster.helpers import (
    materializations,
    metadata_values,
    observations,
    run_log_messages,
    run_stream,
    sql_value,
)

SYNTHETIC_QUOTES = """
streams:
  - name: syn_quotes
    provider: synthetic
    mode: quotes
    symbols: [AAPL, MSFT, SPY]
    provider_options: {rate: 200}
    coordinator: {batch_size: 5000, flush_interval: 0.5}
"""


def test_stream_writes_rows_and_reports_progress(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
) -> None:
    write_streams(SYNTHETIC_QUOTES)
    result = run_stream(
        instance, resources, stream="syn_quotes", max_seconds=2.0, progress_interval=0.5,
        heartbeat_interval=0.5,
    )  # fmt: skip
    assert result.success
    mats = observations(instance, result.run_id)
    assert len(mats) >= 2  # periodic progress, then the final counters
    assert {m.asset_key for m in mats} == {QUOTES.key}
    # Progress is observed, not materialized: no new version of the table every 30 s.
    assert materializations(instance, result.run_id) == []
    assert all(m.tags == {"mdp/kind": "stream"} for m in mats)  # the run's mdp tags
    # Numbers stay numbers (the UI plots them).
    assert isinstance(mats[-1].metadata["committed"], dg.IntMetadataValue)
    assert isinstance(mats[-1].metadata["rate_per_s"], dg.FloatMetadataValue)
    final = metadata_values(mats[-1])
    assert final["stream"] == "syn_quotes"
    assert final["state"] == "finished"
    for key in ("received", "committed", "dead_lettered", "dropped", "rate_per_s",
                "queue_depth", "dlq_depth", "dagster/last_updated_timestamp"):  # fmt: skip
        assert key in final, key
    assert final["received"] > 0
    assert final["received"] == final["committed"] + final["dead_lettered"] + final["dropped"]
    assert final["new_rows"] == sql_value(store_dsn, "SELECT count(*) FROM mdp.quotes")
    # Progress counts grow; no connection details anywhere in the metadata.
    committed = [metadata_values(m)["committed"] for m in mats]
    assert committed == sorted(committed)
    text = repr([m.metadata for m in mats])
    assert "postgresql://" not in text and "host=" not in text
    # Heartbeats carry the Dagster run id (what the supervisor's staleness check reads).
    beats = sql_value(
        store_dsn, "SELECT count(*) FROM mdp.stream_heartbeats WHERE run_id = $1", result.run_id
    )
    assert beats >= 2
    # The library's log records reach the run's log.
    messages = run_log_messages(instance, result.run_id)
    assert any("[mdp_core.pipeline] stream syn_quotes running" in m for m in messages)
    assert any("balanced" in m and "[mdp_core.pipeline]" in m for m in messages)


async def _wait_for_rows(conn: asyncpg.Connection, done: threading.Event) -> bool:
    """Whether the quotes table got more than 500 rows (before ``done`` or 60 s)."""
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        has_table = await conn.fetchval("SELECT to_regclass('mdp.quotes') IS NOT NULL")
        if has_table and await conn.fetchval("SELECT count(*) > 500 FROM mdp.quotes"):
            return True
        await asyncio.sleep(0.05)
    return False


def _sigint_when_rows(dsn: str, done: threading.Event) -> threading.Thread:
    """Send SIGINT to this process as soon as the quotes table has rows (once)."""

    async def wait_for_rows() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return await _wait_for_rows(conn, done)
        finally:
            await conn.close()

    def watch() -> None:
        if asyncio.run(wait_for_rows()) and not done.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_interrupt_drains_with_nothing_lost(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
) -> None:
    write_streams(SYNTHETIC_QUOTES.replace("rate: 200", "rate: 2000"))
    done = threading.Event()
    watcher = _sigint_when_rows(store_dsn, done)
    try:
        # max_seconds bounds the test if the interrupt never comes (the asserts then fail)
        result = run_stream(instance, resources, stream="syn_quotes", max_seconds=60.0)
    finally:
        done.set()
        watcher.join(timeout=10)
    # execute_in_process has no termination request, so Dagster calls the run a failure;
    # under `dagster dev` the same path ends CANCELED (tests/dagster/test_e2e_dagster_dev.py).
    assert not result.success
    messages = run_log_messages(instance, result.run_id)
    assert any("termination requested" in m for m in messages)
    mats = [metadata_values(m) for m in observations(instance, result.run_id)]
    final = mats[-1]
    assert final["state"] == "finished"
    assert final["received"] > 500
    assert final["received"] == final["committed"] + final["dead_lettered"] + final["dropped"]
    assert final["dropped"] == 0 and final["dead_lettered"] == 0
    assert final["new_rows"] == sql_value(store_dsn, "SELECT count(*) FROM mdp.quotes")
    # The last heartbeat has the same, balanced counters.
    last = sql_value(
        store_dsn,
        "SELECT counters FROM mdp.stream_heartbeats WHERE run_id = $1 ORDER BY ts DESC LIMIT 1",
        result.run_id,
    )
    assert '"state": "finished"' in last
    assert f'"committed": {final["committed"]}' in last


def _sigint_while_locked(dsn: str, done: threading.Event) -> threading.Thread:
    """Once the quotes table has rows: lock it (the pipeline's writes wait, so its drain
    cannot finish), send SIGINT to this process and hold the lock until ``done``."""

    async def lock_and_interrupt() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            if not await _wait_for_rows(conn, done):
                return
            async with conn.transaction():
                await conn.execute("LOCK TABLE mdp.quotes IN ACCESS EXCLUSIVE MODE")
                os.kill(os.getpid(), signal.SIGINT)
                await asyncio.to_thread(done.wait, 60)
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(lock_and_interrupt()), daemon=True)
    thread.start()
    return thread


def test_interrupt_that_outlasts_the_drain_budget_gives_up_once(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_streams(SYNTHETIC_QUOTES.replace("rate: 200", "rate: 2000"))
    monkeypatch.setattr(PipelineThread, "drain_budget", lambda self: 0.0)
    done = threading.Event()
    watcher = _sigint_while_locked(store_dsn, done)
    try:
        result = run_stream(instance, resources, stream="syn_quotes", max_seconds=60.0)
    finally:
        done.set()  # the writes go through: the pipeline left behind finishes its drain
        watcher.join(timeout=10)
        for thread in threading.enumerate():
            if thread.name == "mdp-stream-syn_quotes":
                thread.join(timeout=60)
    assert not result.success
    messages = run_log_messages(instance, result.run_id)
    assert sum("termination requested" in m for m in messages) == 1
    assert sum("still draining after 0s" in m for m in messages) == 1
    last = sql_value(
        store_dsn,
        "SELECT counters FROM mdp.stream_heartbeats WHERE run_id = $1 ORDER BY ts DESC LIMIT 1",
        result.run_id,
    )
    assert '"state": "finished"' in last


def test_bars_stream_reports_bars_asset(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
) -> None:
    write_streams(
        """
        streams:
          - name: syn_bars
            provider: synthetic
            mode: bars
            resolution: 5s
            symbols: [AAPL, MSFT]
            provider_options: {rate: 0, start: 2024-01-02T14:30:00Z, max_items: 400}
        """
    )
    result = run_stream(instance, resources, stream="syn_bars", max_seconds=30.0)
    assert result.success
    final = metadata_values(observations(instance, result.run_id)[-1])
    assert observations(instance, result.run_id)[-1].asset_key == BARS_5S.key
    assert final["received"] == 400
    assert sql_value(store_dsn, "SELECT count(*) FROM mdp.bars WHERE resolution = '5s'") == 400


@pytest.mark.parametrize(
    ("mode", "table", "asset"), [("bars", "bars", BARS_5S), ("quotes", "quotes", QUOTES)]
)
def test_ibkr_stream_from_the_simulated_gateway(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
    gateway_port: int,
    mode: str,
    table: str,
    asset: dg.AssetSpec,
) -> None:
    write_streams(
        f"""
        streams:
          - name: ibkr_{mode}
            provider: ibkr
            mode: {mode}
            resolution: 5s
            symbols: [AAPL, MSFT]
            client_id: {31 if mode == "bars" else 32}
        """
    )
    result = run_stream(instance, resources, stream=f"ibkr_{mode}", max_seconds=4.0)
    assert result.success
    mats = observations(instance, result.run_id)
    final = metadata_values(mats[-1])
    assert mats[-1].asset_key == asset.key
    assert final["provider"] == "ibkr" and final["received"] > 0
    assert final["received"] == final["committed"] + final["dead_lettered"] + final["dropped"]
    rows = sql_value(store_dsn, f"SELECT count(*) FROM mdp.{table}")
    assert rows == final["new_rows"] > 0
    symbols = sql_value(store_dsn, f"SELECT array_agg(DISTINCT symbol) FROM mdp.{table}")
    assert sorted(symbols) == ["AAPL", "MSFT"]


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = result.get_step_failure_events()
    assert len(failures) == 1
    data = failures[0].step_failure_data
    return f"{data.error.message if data.error else ''} {data.user_failure_data}"


def test_stream_already_written_by_another_fails_without_retry(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
) -> None:
    write_streams(SYNTHETIC_QUOTES)

    async def hold_lock_during_run() -> dg.ExecuteInProcessResult:
        conn = await asyncpg.connect(store_dsn)
        try:
            await conn.execute(
                "SELECT pg_advisory_lock(hashtextextended('mdp:stream:syn_quotes', 0))"
            )
            return await asyncio.to_thread(
                run_stream, instance, resources, stream="syn_quotes", max_seconds=30.0
            )
        finally:
            await conn.close()

    result = asyncio.run(hold_lock_during_run())
    assert not result.success
    message = _failure_message(result)
    assert "syn_quotes already has a writer" in message
    assert "mdp:stream:syn_quotes" in message
    failure = result.get_step_failure_events()[0].step_failure_data
    assert failure.user_failure_data is not None
    assert sql_value(store_dsn, "SELECT count(*) FROM mdp.quotes") == 0


def test_provider_failure_fails_the_run_with_the_error(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    write_streams(
        f"""
        streams:
          - name: broken_replay
            provider: replay
            mode: bars
            symbols: [SPY]
            resolution: 1m
            provider_options: {{path: "{tmp_path / "missing.csv"}"}}
        """
    )
    result = run_stream(instance, resources, stream="broken_replay", max_seconds=30.0)
    assert not result.success
    message = _failure_message(result)
    assert "stream broken_replay failed" in message
    assert "missing.csv" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SYNTHETIC_QUOTES, "no stream named 'nope'"),
        (
            "streams:\n  - {name: bad, provider: synthetic, mode: ticks, symbols: [AAPL]}\n",
            "streams[0] ('bad'): field 'mode'",
        ),
    ],
)
def test_unknown_or_malformed_stream_is_a_clear_failure(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    write_streams: Callable[[str], Path],
    text: str,
    expected: str,
) -> None:
    write_streams(text)
    result = run_stream(instance, resources, stream="nope", max_seconds=1.0)
    assert not result.success
    assert expected in _failure_message(result)
