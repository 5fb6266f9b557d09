"""The coordinator with the real sinks on the embedded PostgreSQL: poison rows (T6), the
database down longer than the retry budget then replay (T2), the database killed
mid-stream (T3), DiskFull / TooManyConnections (T10)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from mdp_core.coordinator import CoordinatorSettings, RetryPolicy, WriteCoordinator
from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Bar, Quote
from mdp_core.store.database import Database
from mdp_core.store.embedded import EmbeddedServer
from mdp_core.store.sinks import BarsSink, QuotesSink
from tests.coordinator.helpers import bars, quotes

pytestmark = pytest.mark.timeout(120)


async def stored_quotes(db: Database) -> dict[tuple[object, ...], Quote]:
    """The quotes table, as records by key (ground truth to compare with what was sent)."""
    rows = await db.pool.fetch(
        "SELECT symbol, ts, bid, ask, bid_size, ask_size, last, last_size, source FROM mdp.quotes"
    )
    stored = [Quote(**dict(r)) for r in rows]
    return {q.key: q for q in stored}


def as_sent(items: Sequence[Quote]) -> dict[tuple[object, ...], Quote]:
    return {q.key: q for q in items}


def poison(record: Quote | Bar, **fields: object) -> None:
    for name, value in fields.items():
        object.__setattr__(record, name, value)  # bypass validation, as a buggy producer


def balanced(coord: WriteCoordinator) -> bool:  # type: ignore[type-arg]
    h = coord.stats()
    return h.submitted == h.committed + h.dead_lettered + h.dropped


async def test_t6_poison_quotes_in_a_10k_batch(db: Database, tmp_path: Path) -> None:
    items = quotes(10_000)
    poison(items[17], bid=-1.0)
    poison(items[4242], ask=math.inf)
    poison(items[9999], bid_size=-5.0)
    bad = {items[17].key: "quotes_bid_check", items[4242].key: "quotes_ask_check",
           items[9999].key: "quotes_bid_size_check"}  # fmt: skip
    dlq = DeadLetterQueue(tmp_path / "dlq")
    settings = CoordinatorSettings(batch_size=10_000, workers=2)
    sink = QuotesSink(db)
    async with asyncio.timeout(60), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        await coord.submit_many(items)
        await coord.drain()
        h = coord.stats()
    stored = await stored_quotes(db)
    assert stored == {k: q for k, q in as_sent(items).items() if k not in bad}
    assert (h.committed, h.new_rows, h.dead_lettered) == (9_997, 9_997, 3)
    assert h.workers_alive == 2 and h.worker_restarts == 0 and h.retries == 0
    records = dlq.list()
    assert len(records) == 3
    for record in records:
        key = (record.item["symbol"], datetime.fromisoformat(record.item["ts"]))
        assert record.error.sqlstate == "23514"
        assert record.error.type == "CheckViolationError"
        assert bad[key] in record.error.message
        assert record.attempts == 1 and record.kind == "quote"
    assert {(r.item["bid"], r.item["ask"], r.item["bid_size"]) for r in records} >= {
        (-1.0, items[17].ask, items[17].bid_size)
    }


async def test_t6_poison_bars(db: Database, tmp_path: Path) -> None:
    items = bars(2_000)
    poison(items[5], low=50.0)  # low above open
    poison(items[1500], volume=-1.0)
    poison(items[1999], resolution="7s")
    dlq = DeadLetterQueue(tmp_path / "dlq")
    settings = CoordinatorSettings(batch_size=2_000, workers=1)
    async with asyncio.timeout(60), WriteCoordinator(BarsSink(db), settings, dlq=dlq) as coord:
        await coord.submit_many(items)
        await coord.drain()
        assert coord.stats().workers_alive == 1
    rows = await db.pool.fetchval("SELECT count(*) FROM mdp.bars")
    assert rows == 1_997
    records = dlq.list()
    assert sorted(r.item["ts"] for r in records) == sorted(
        items[i].ts.isoformat() for i in (5, 1500, 1999)
    )
    assert {r.error.sqlstate for r in records} == {"23514"}
    assert {r.kind for r in records} == {"bar"}
    assert balanced(coord)


class DiskFullQuotesSink(QuotesSink):
    """The real sink behind a connection that reports a full disk ``failures`` times."""

    def __init__(self, db: Database, error: Exception, failures: int) -> None:
        super().__init__(db)
        self.error = error
        self.failures = failures

    async def write(self, batch: Sequence[Quote]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return await super().write(batch)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.DiskFullError("could not extend file: No space left on device"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    ],
)
async def test_t10_disk_full_and_too_many_connections(
    db: Database, tmp_path: Path, error: Exception
) -> None:
    dlq = DeadLetterQueue(tmp_path / "dlq")
    sink = DiskFullQuotesSink(db, error, failures=5)
    settings = CoordinatorSettings(
        workers=2, batch_size=100, circuit_failure_threshold=3, circuit_reset_timeout=0.1
    )
    # real (short) delays: several workers waiting on one circuit need a real clock
    policy = RetryPolicy(max_attempts=20, initial_backoff=0.01, max_backoff=0.05)
    items = quotes(1_000)
    coord = WriteCoordinator(sink, settings, policy, dlq=dlq)
    async with asyncio.timeout(60), coord:
        await coord.submit_many(items)
        await coord.drain()
        h = coord.stats()
    assert h.circuit_opened >= 1 and h.circuit == "closed"
    assert h.retries == 5 and h.committed == 1_000 and h.dead_lettered == 0
    assert await stored_quotes(db) == as_sent(items)


async def test_t2_database_down_longer_than_the_budget_then_replay(
    own_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The database is down: batches are spooled after the retry budget; once it is back,
    replay commits them; replaying again adds nothing; the same range twice adds nothing."""
    db = await Database.connect(own_server.dsn(), command_timeout=5, connect_timeout=2)
    try:
        dlq = DeadLetterQueue(tmp_path / "dlq")
        sink = QuotesSink(db)
        items = quotes(2_000)
        await sink.write(items[:100])  # some are already in the table
        await asyncio.to_thread(own_server.stop, "fast")
        settings = CoordinatorSettings(workers=2, batch_size=250, circuit_reset_timeout=0.2)
        policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
        async with asyncio.timeout(60):
            async with WriteCoordinator(sink, settings, policy, dlq=dlq) as coord:
                await coord.submit_many(items)
                await coord.drain()
            h = coord.stats()
            assert (h.committed, h.dead_lettered) == (0, 2_000)
            assert dlq.count() == 2_000
            assert {r.error.type for r in dlq.list()} <= {
                "FileNotFoundError", "ConnectionRefusedError", "ConnectionDoesNotExistError",
                "CannotConnectNowError", "ConnectionResetError", "InterfaceError",
            }  # fmt: skip

            await asyncio.to_thread(own_server.start)
            first = await dlq.replay(sink)
            if first.still_failing:  # a pooled connection from before the restart
                first = await dlq.replay(sink)
            assert first.still_failing == 0 and first.quarantined == 0
            assert first.new_rows == 1_900  # the first 100 were already there
            assert dlq.count() == 0
            again = await dlq.replay(sink)
            assert (again.replayed, again.new_rows) == (0, 0)

            dlq.put(items, RuntimeError("spooled twice"), 1)  # the same range again
            twice = await dlq.replay(sink)
            assert (twice.replayed, twice.new_rows, twice.still_failing) == (2_000, 0, 0)
        assert await stored_quotes(db) == as_sent(items)
    finally:
        await db.close()


async def test_t3_database_killed_mid_stream(own_server: EmbeddedServer, tmp_path: Path) -> None:
    """T3: stop the server immediately while the stream flows, restart it 2 s later: every
    submitted key ends in the table or the spool, no duplicate, the counts balance."""
    db = await Database.connect(own_server.dsn(), command_timeout=5, connect_timeout=2)
    try:
        dlq = DeadLetterQueue(tmp_path / "dlq")
        sink = QuotesSink(db)
        items = quotes(60_000, symbol="KILL")
        settings = CoordinatorSettings(
            capacity=5_000, workers=4, batch_size=500, flush_interval=0.05,
            circuit_reset_timeout=0.25,
        )  # fmt: skip
        policy = RetryPolicy(max_attempts=6, initial_backoff=0.05, max_backoff=1.0)
        async with asyncio.timeout(90):
            async with WriteCoordinator(sink, settings, policy, dlq=dlq) as coord:

                async def produce() -> None:
                    for start in range(0, len(items), 100):
                        await coord.submit_many(items[start : start + 100])
                        await asyncio.sleep(0)

                producer = asyncio.create_task(produce())
                while coord.stats().committed < 10_000:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(own_server.stop, "immediate")
                killed_at = coord.stats().committed
                await asyncio.sleep(2.0)  # the outage (the fault itself, not synchronisation)
                await asyncio.to_thread(own_server.start)
                await producer
                await coord.drain()
            h = coord.stats()
        assert h.submitted == len(items) and balanced(coord)
        assert killed_at < len(items)
        stored = await stored_quotes(db)
        spooled = {r.record().key for r in dlq.list()}
        sent = as_sent(items)
        assert all(sent[k] == q for k, q in stored.items())  # only what was sent, unchanged
        assert stored.keys() | spooled == sent.keys()  # nothing lost
        assert len(stored) >= h.committed  # everything counted committed is in the table
        assert h.dead_lettered == len(spooled)

        result = await dlq.replay(sink)
        if result.still_failing:
            result = await dlq.replay(sink)
        assert await stored_quotes(db) == as_sent(items)
    finally:
        await db.close()


async def test_the_design_example_as_written(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented coordinator snippet, verbatim in shape: runtime settings, default DLQ,
    real bars."""
    from mdp_core import CoordinatorRuntimeSettings
    from mdp_core import RetryPolicy as PublicRetryPolicy
    from mdp_core import WriteCoordinator as PublicWriteCoordinator
    from mdp_core.store import BarsSink as PublicBarsSink
    from mdp_core.store import Database as PublicDatabase

    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    settings = CoordinatorRuntimeSettings(
        coordinator_capacity=20_000,
        coordinator_workers=4,
        coordinator_batch_size=500,
        coordinator_flush_interval=0.25,
    )

    async def stream():  # type: ignore[no-untyped-def]
        for bar in bars(1_234):
            yield bar

    async with asyncio.timeout(60):
        async with PublicDatabase.connect() as db, PublicBarsSink(db) as sink:
            async with PublicWriteCoordinator(
                sink=sink, settings=settings, retry_policy=PublicRetryPolicy(max_attempts=5)
            ) as coord:
                async for bar in stream():
                    await coord.submit(bar)
                await coord.drain()
                assert coord.stats().committed == 1_234
            assert await db.pool.fetchval("SELECT count(*) FROM mdp.bars") == 1_234
    assert coord.dlq.count() == 0 and coord.stats().state == "stopped"


async def test_connections_cut_mid_batch_spool_nothing(db: Database, tmp_path: Path) -> None:
    """pg_terminate_backend of the writers while they COPY or COMMIT: every cut batch is
    retried (the outcome of a cut COMMIT is unknown; writing again is idempotent), nothing
    reaches the spool while the retry budget lasts, and the table holds exactly what was
    sent."""
    from mdp_core.pipeline import STREAM_RETRY_POLICY

    items = quotes(100_000, symbol="CUT")
    dlq = DeadLetterQueue(tmp_path / "dlq")
    settings = CoordinatorSettings(workers=2, batch_size=2_000, flush_interval=0)
    kills = 0
    admin = await asyncpg.connect(db.dsn)
    try:
        async with asyncio.timeout(90):
            coord = WriteCoordinator(QuotesSink(db), settings, STREAM_RETRY_POLICY, dlq=dlq)
            async with coord:
                producer = asyncio.create_task(coord.submit_many(items))
                seen = 0  # one cut per committed batch at most: cuts, not a dead server
                while kills < 10 and coord.stats().committed < len(items):
                    committed = coord.stats().committed
                    if committed > seen:
                        pids = await admin.fetch(
                            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND application_name = 'mdp' AND state = 'active' AND "
                            "(query LIKE 'COPY%' OR query LIKE 'INSERT%' OR query LIKE 'COMMIT%')"
                        )
                        for row in pids[:1]:
                            if await admin.fetchval("SELECT pg_terminate_backend($1)", row["pid"]):
                                kills += 1
                                seen = committed
                    await asyncio.sleep(0.002)  # polling the server's activity view
                await producer
                await coord.drain()
            h = coord.stats()
    finally:
        await admin.close()
    assert kills >= 1
    assert (h.committed, h.dead_lettered) == (len(items), 0) and h.retries >= 1
    assert dlq.count() == 0
    assert await stored_quotes(db) == as_sent(items)
