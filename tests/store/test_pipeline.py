"""Pipeline: provider -> channel -> coordinator -> PostgreSQL, stopping and accounting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Quote, Record
from mdp_core.pipeline import Pipeline
from mdp_core.providers.base import ProviderSource
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.store.database import Database, LockHeldError
from mdp_core.streams import StreamsConfigError, StreamSpec, load_streams

START = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def synthetic_spec(name: str = "s1", **extra: object) -> StreamSpec:
    options = {"rate": 500.0, "start": START, "seed": 7} | extra.pop("options", {})  # type: ignore[operator]
    return StreamSpec(
        name=name,
        provider="synthetic",
        mode="quotes",
        symbols=["AAPL", "MSFT"],
        provider_options=options,
        coordinator={"batch_size": 200, "flush_interval": 0.05},  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


async def row_count(db: Database, table: str) -> int:
    return await db.count(table)


async def test_runs_until_max_seconds_then_drains_and_balances(fresh_dsn: str) -> None:
    async with Database.connect(fresh_dsn) as db:
        pipeline = Pipeline(synthetic_spec(), db, heartbeat_interval=0.2)
        stats = await asyncio.wait_for(pipeline.run(max_seconds=1.0), 30)
        assert stats.state == "finished" and stats.balanced
        assert stats.received > 0
        assert stats.coordinator.dead_lettered == 0 and stats.dropped == {}
        # every received quote has a distinct key, so every one is a new row
        assert await row_count(db, "quotes") == stats.received == stats.coordinator.new_rows
        beats = await db.pool.fetch(
            "SELECT counters FROM mdp.stream_heartbeats WHERE stream = $1 ORDER BY ts", "s1"
        )
        assert beats, "heartbeats are written"
        assert '"state": "finished"' in beats[-1]["counters"]
        # the write paths are counted with the rest: new keys all went in by direct COPY
        paths = json.loads(beats[-1]["counters"])["write_paths"]
        assert paths["fast_rows"] == stats.received and paths["fast_batches"] >= 1
        assert paths["fallback_rows"] == paths["idempotent_rows"] == 0


async def test_request_stop_drains_everything_in_flight(fresh_dsn: str) -> None:
    async with Database.connect(fresh_dsn) as db:
        pipeline = Pipeline(synthetic_spec(options={"rate": None}), db)
        run = asyncio.create_task(pipeline.run())
        # wait for real progress (or the run's end, so a failing run reports its error)
        await wait_until(lambda: run.done() or pipeline.stats().coordinator.committed >= 2_000)
        pipeline.request_stop()
        stats = await asyncio.wait_for(run, 30)
        assert stats.balanced and stats.received >= 2_000
        assert await row_count(db, "quotes") == stats.received


async def test_cancelling_run_drains_like_a_stop(fresh_dsn: str, tmp_path: Path) -> None:
    """A cancelled run (a Dagster terminate, Ctrl-C) still stops the provider, delivers the
    channel and drains the coordinator before the cancellation propagates."""
    async with Database.connect(fresh_dsn) as db:
        dlq = DeadLetterQueue(tmp_path)
        pipeline = Pipeline(synthetic_spec(options={"rate": None}), db, dlq=dlq)
        run = asyncio.create_task(pipeline.run())
        await wait_until(lambda: run.done() or pipeline.stats().coordinator.committed > 0)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 30)
        stats = pipeline.stats()
        assert stats.received > 0 and stats.channel.depth == 0
        assert stats.balanced, stats.to_dict()
        assert await row_count(db, "quotes") + dlq.count() == stats.received
        assert stats.state == "failed" and "CancelledError" in (stats.error or "")


async def test_second_writer_for_the_same_stream_is_refused(fresh_dsn: str) -> None:
    async with Database.connect(fresh_dsn) as db:
        first = Pipeline(synthetic_spec("solo"), db)
        run = asyncio.create_task(first.run())
        await wait_until(lambda: run.done() or first.stats().received > 0)
        refused = Pipeline(synthetic_spec("solo"), db)
        with pytest.raises(LockHeldError, match="mdp:stream:solo"):
            await refused.run(max_seconds=1)
        first.request_stop()
        assert (await asyncio.wait_for(run, 30)).balanced
        runs = await db.pool.fetch(
            "SELECT DISTINCT run_id FROM mdp.stream_heartbeats WHERE stream = 'solo'"
        )
        # the refused writer left no heartbeat that could read as the stream failing
        assert [r["run_id"] for r in runs] == [first.run_id] != [refused.run_id]


class Failing(ProviderSource):
    """Emits ``good`` quotes, then fails like a provider losing its upstream."""

    name = "failing"

    def __init__(self, symbols: list[str], mode: str = "quotes", good: int = 50, **_: object):
        super().__init__(symbols, mode)
        self.good = good

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def stream(self) -> AsyncIterator[Record]:  # type: ignore[override]
        for i in range(self.good):
            yield Quote("AAA", START.replace(microsecond=i), bid=1.0, ask=1.01)
        raise ConnectionError("upstream went away")


async def test_provider_failure_is_raised_after_the_drain(fresh_dsn: str) -> None:
    registry = ProviderRegistry()
    registry.register("failing", Failing)
    spec = StreamSpec(name="f", provider="failing", mode="quotes", symbols=["AAA"])
    async with Database.connect(fresh_dsn) as db:
        pipeline = Pipeline(spec, db, registry=registry)
        with pytest.raises(ConnectionError, match="upstream went away"):
            await asyncio.wait_for(pipeline.run(), 30)
        stats = pipeline.stats()
        assert stats.state == "failed" and "upstream went away" in (stats.error or "")
        assert stats.balanced and stats.received == 50
        assert await row_count(db, "quotes") == 50  # what came before the failure landed


async def test_dedupe_drops_are_counted_in_the_accounting(fresh_dsn: str, tmp_path: Path) -> None:
    registry = ProviderRegistry()

    class Repeating(Failing):
        async def stream(self) -> AsyncIterator[Record]:  # type: ignore[override]
            for i in range(100):
                yield Quote("AAA", START.replace(microsecond=i % 10), bid=1.0, ask=1.01)

    registry.register("repeating", Repeating)
    spec = StreamSpec(
        name="d", provider="repeating", mode="quotes", symbols=["AAA"], dedupe_ttl=60.0
    )
    async with Database.connect(fresh_dsn) as db:
        stats = await Pipeline(spec, db, registry=registry, dlq=DeadLetterQueue(tmp_path)).run()
    assert (stats.received, stats.dropped, stats.coordinator.submitted) == (100, {"dedupe": 90}, 10)
    assert stats.balanced


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streams.yaml"
    path.write_text(text)
    return path


def test_load_streams_reads_entries(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
streams:
  - name: ibkr_bars
    mode: bars
    symbols: [aapl, MSFT]
    resolution: 5 secs
    client_id: 11
    coordinator: {workers: 2, batch_size: 1000}
  - name: quotes
    provider: synthetic
    mode: quotes
    symbols: "SPY,QQQ"
""",
    )
    bars, quotes = load_streams(path)
    assert (bars.symbols, bars.resolution, bars.client_id) == (["AAPL", "MSFT"], "5s", 11)
    assert bars.coordinator.to_settings().batch_size == 1000
    assert bars.provider_kwargs()["ibkr_settings"].client_id == 11
    assert quotes.symbols == ["SPY", "QQQ"] and quotes.provider_kwargs() == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("streams: [{name: a, symbols: [X], resolution: 7s}]",
         r"streams\[0\] \('a'\): field 'resolution': .*unsupported resolution '7s'"),
        ("streams: [{name: a, symbols: [X]}, {name: b}]",
         r"streams\[1\] \('b'\): field 'symbols': Field required"),
        ("streams: [{name: a, symbols: [X], colour: red}]",
         r"streams\[0\] \('a'\): field 'colour': Extra inputs are not permitted"),
        ("streams: [{name: a, symbols: [X], coordinator: {workers: 0}}]",
         r"field 'coordinator.workers': Input should be greater than or equal to 1"),
        ("streams: [{name: a, symbols: []}]", r"field 'symbols': .*no symbols given"),
        (f"streams: [{{name: a, symbols: [{'X' * 70}]}}]",
         r"field 'symbols': .*invalid symbol 'X{70}': expected 1-64 printable characters"),
        ("streams: [{name: 'bad name', symbols: [X]}]", r"field 'name': String should match"),
        ("streams: [{name: a, symbols: [X]}, {name: a, symbols: [Y]}]",
         r"streams 'a' and 'a' share name 'a'"),
        ("streams: [{name: a, symbols: [X], client_id: 3}, {name: b, symbols: [Y], client_id: 3}]",
         r"streams 'a' and 'b' share client_id 3"),
        ("streams: {name: a}", r"expected a top-level 'streams:' list"),
        ("streams: [1]", r"streams\[0\]: expected a mapping, got 1"),
        ("streams: [{name: a, symbols: [X], provider_options: {resolution: 1m}}]",
         r"field 'provider_options': .*resolution cannot be a provider option"),
        ("streams: [", r"not valid YAML"),
    ],
)  # fmt: skip
def test_malformed_streams_file_names_entry_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(StreamsConfigError, match=message):
        load_streams(write(tmp_path, text))


async def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_lock_is_reacquired_after_a_database_restart(own_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with Database.connect(own_server.dsn()) as db:
        pipeline = Pipeline(
            synthetic_spec("relock"), db, dlq=DeadLetterQueue(tmp_path), lock_check_interval=0.1
        )
        run = asyncio.create_task(pipeline.run())
        await wait_until(lambda: pipeline.stats().coordinator.committed > 0)
        assert pipeline.holds_lock
        own_server.stop("immediate")
        await wait_until(lambda: not pipeline.holds_lock)
        own_server.start()
        await wait_until(lambda: pipeline.holds_lock)  # re-acquired by the watcher
        with pytest.raises(LockHeldError):
            await Pipeline(synthetic_spec("relock"), db).run(max_seconds=1)
        pipeline.request_stop()
        stats = await asyncio.wait_for(run, 60)
        assert stats.balanced
        spooled = DeadLetterQueue(tmp_path).count()
        assert await row_count(db, "quotes") + spooled == stats.received


async def test_stream_stops_if_another_writer_took_the_lock(own_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with Database.connect(own_server.dsn()) as db:
        first = Pipeline(
            synthetic_spec("taken"), db, dlq=DeadLetterQueue(tmp_path), lock_check_interval=3600
        )
        run = asyncio.create_task(first.run())
        await wait_until(lambda: first.stats().coordinator.committed > 0)
        own_server.stop("immediate")
        await wait_until(lambda: not first.holds_lock)
        own_server.start()
        second = Pipeline(synthetic_spec("taken"), db, dlq=DeadLetterQueue(tmp_path / "2"))
        second_run = asyncio.create_task(second.run())
        await wait_until(lambda: second.holds_lock)
        with pytest.raises(LockHeldError):
            await first.check_lock()  # finds the lock taken: asks the stream to stop
        with pytest.raises(LockHeldError):
            await asyncio.wait_for(run, 60)  # which drains, then fails
        assert first.stats().balanced
        second.request_stop()
        assert (await asyncio.wait_for(second_run, 60)).balanced


_KILL_LOCK = (
    "SELECT pg_terminate_backend(pid) FROM pg_locks "
    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
)


async def test_the_lock_watcher_survives_unexpected_errors(
    fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's connection is killed; re-acquiring it fails twice with an error nobody
    planned for, then works: the watcher keeps going (with backoff), the lock is held
    again, the stream never stopped."""
    async with Database.connect(fresh_dsn) as db:
        pipeline = Pipeline(
            synthetic_spec("watch"), db, dlq=DeadLetterQueue(tmp_path), lock_check_interval=0.05
        )
        real = pipeline._acquire_lock
        failures = {"left": 2, "calls": 0}

        async def flaky() -> None:
            failures["calls"] += 1
            if failures["calls"] > 1 and failures["left"]:  # not the first, at start
                failures["left"] -= 1
                raise RuntimeError("an unexpected error")
            await real()

        monkeypatch.setattr(pipeline, "_acquire_lock", flaky)
        run = asyncio.create_task(pipeline.run())
        await wait_until(lambda: pipeline.holds_lock)
        await db.pool.execute(_KILL_LOCK)
        await wait_until(lambda: failures["left"] == 0 and pipeline.holds_lock)
        assert not run.done()
        pipeline.request_stop()
        stats = await asyncio.wait_for(run, 60)
    assert stats.balanced and stats.error is None


async def test_a_lock_that_cannot_be_held_stops_the_stream(
    fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-acquiring keeps failing for a reason other than an unreachable database: after a
    few attempts the stream stops (drained, balanced) and fails with that error, rather
    than writing on without its single-writer guarantee."""
    async with Database.connect(fresh_dsn) as db:
        pipeline = Pipeline(
            synthetic_spec("nolock"), db, dlq=DeadLetterQueue(tmp_path), lock_check_interval=0.05
        )
        real = pipeline._acquire_lock
        calls = {"n": 0}

        async def broken() -> None:
            calls["n"] += 1
            if calls["n"] > 1:  # the first acquisition, at start, works
                raise RuntimeError("the lock cannot be taken")
            await real()

        monkeypatch.setattr(pipeline, "_acquire_lock", broken)
        run = asyncio.create_task(pipeline.run())
        await wait_until(lambda: pipeline.holds_lock)
        await db.pool.execute(_KILL_LOCK)
        with pytest.raises(RuntimeError, match="the lock cannot be taken"):
            await asyncio.wait_for(run, 60)
    assert calls["n"] == 1 + 5  # _LOCK_FAILURES attempts after the first
    assert pipeline.stats().balanced
