"""Network faults through our TCP chaos proxy to the real PostgreSQL: a connection cut in
the middle of a COPY (T5) and a blackhole (T4)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mdp_core.coordinator import CoordinatorSettings, RetryPolicy, WriteCoordinator
from mdp_core.dlq import DeadLetterQueue
from mdp_core.store.database import Database
from mdp_core.store.embedded import EmbeddedServer
from mdp_core.store.sinks import QuotesSink
from mdp_core.store.write_path import WritePathPolicy
from tests.coordinator.helpers import T0, FakeClock, quotes
from tests.coordinator.proxy import ChaosProxy, chaos_proxy, unix_socket_path

pytestmark = pytest.mark.timeout(120)


async def table_keys(db: Database) -> tuple[set[tuple[object, ...]], int]:
    rows = await db.pool.fetch("SELECT symbol, ts FROM mdp.quotes")
    return {(r["symbol"], r["ts"]) for r in rows}, len(rows)


async def proxied_database(
    proxy: ChaosProxy, fresh_dsn: str, *, command_timeout: float | None = None
) -> Database:
    """``Database.connect`` through the proxy; ``command_timeout`` None: the production
    setting (``MDP_PG_COMMAND_TIMEOUT``)."""
    db = await Database.connect(
        proxy.dsn(urlsplit(fresh_dsn).path.lstrip("/")),
        command_timeout=command_timeout,
        connect_timeout=1.0,
        max_size=2,
    )
    await db.ensure_partitions("quotes", {T0.date()})
    return db


def socket_of(server: EmbeddedServer) -> Path:
    socket_dir = server.status().socket_dir
    assert socket_dir is not None
    return unix_socket_path(socket_dir)


async def test_t5_cut_mid_copy_is_retried_and_never_partial(
    pg_server: EmbeddedServer, fresh_dsn: str, tmp_path: Path
) -> None:
    """The cut hits the COPY into the stage (the idempotent path, where replays and
    backfills write): the cut batch is retried and every row is stored once."""
    items = quotes(20_000)
    async with asyncio.timeout(60), chaos_proxy(socket_of(pg_server)) as proxy:
        db = await proxied_database(proxy, fresh_dsn, command_timeout=5)
        try:
            dlq = DeadLetterQueue(tmp_path / "dlq")
            settings = CoordinatorSettings(workers=1, batch_size=5_000, flush_interval=0)
            policy = RetryPolicy(max_attempts=5, initial_backoff=0.01)
            sink = QuotesSink(db, WritePathPolicy(start_idempotent=True))
            async with WriteCoordinator(sink, settings, policy, dlq=dlq) as coord:
                proxy.set_mode("close_after", n=200_000)  # a 5,000-row COPY is ~500 kB
                await coord.submit_many(items)
                await coord.drain()
                h = coord.stats()
            assert proxy.cuts == 1
            assert h.retries >= 1 and (h.committed, h.dead_lettered) == (20_000, 0)
            assert (sink.paths.idempotent_rows, sink.paths.fast_rows) == (20_000, 0)
            keys, total = await table_keys(db)
            assert keys == {q.key for q in items} and total == 20_000
        finally:
            await db.close()


async def test_t5_a_cut_on_the_fast_path_loses_nothing_and_duplicates_nothing(
    pg_server: EmbeddedServer, fresh_dsn: str, tmp_path: Path
) -> None:
    """The cut hits the direct COPY into mdp.quotes (the fast path, the sink's default for
    new keys): the cut batch is rolled back, retried, and every row is stored once."""
    items = quotes(20_000)
    async with asyncio.timeout(60), chaos_proxy(socket_of(pg_server)) as proxy:
        db = await proxied_database(proxy, fresh_dsn, command_timeout=5)
        try:
            dlq = DeadLetterQueue(tmp_path / "dlq")
            settings = CoordinatorSettings(workers=1, batch_size=5_000, flush_interval=0)
            policy = RetryPolicy(max_attempts=5, initial_backoff=0.01)
            sink = QuotesSink(db)
            async with WriteCoordinator(sink, settings, policy, dlq=dlq) as coord:
                proxy.set_mode("close_after", n=700_000)  # the second batch's COPY
                await coord.submit_many(items)
                await coord.drain()
                h = coord.stats()
            assert proxy.cuts == 1
            assert h.retries >= 1 and (h.committed, h.dead_lettered) == (20_000, 0)
            assert h.new_rows == 20_000
            # nothing of the cut COPY was stored: its retry went in fast, without a conflict
            assert (sink.paths.fast_rows, sink.paths.fallback_batches) == (20_000, 0)
            keys, total = await table_keys(db)
            assert keys == {q.key for q in items} and total == 20_000
            assert dlq.count() == 0
        finally:
            await db.close()


async def test_t5_a_cut_batch_is_entirely_absent(
    pg_server: EmbeddedServer, fresh_dsn: str, tmp_path: Path
) -> None:
    """No retries allowed: the batch cut mid-COPY is spooled whole and none of its rows is in
    the table; the other batches are there whole. Replay completes it."""
    items = quotes(15_000)
    async with asyncio.timeout(60), chaos_proxy(socket_of(pg_server)) as proxy:
        db = await proxied_database(proxy, fresh_dsn, command_timeout=5)
        try:
            dlq = DeadLetterQueue(tmp_path / "dlq")
            settings = CoordinatorSettings(workers=1, batch_size=5_000, flush_interval=0)
            sink = QuotesSink(db)
            coord = WriteCoordinator(sink, settings, RetryPolicy(max_attempts=1), dlq=dlq)
            async with coord:
                proxy.set_mode("close_after", n=200_000)
                await coord.submit_many(items)
                await coord.drain()
            assert proxy.cuts == 1
            spooled = {r.record().key for r in dlq.list()}
            assert spooled == {q.key for q in items[:5_000]}  # the first batch, whole
            keys, total = await table_keys(db)
            assert keys == {q.key for q in items[5_000:]} and total == 10_000
            result = await dlq.replay(sink)
            assert (result.replayed, result.new_rows) == (5_000, 5_000)
            keys, total = await table_keys(db)
            assert keys == {q.key for q in items} and total == 15_000
        finally:
            await db.close()


async def test_t4_blackhole_holds_producers_and_retries_on_schedule(
    pg_server: EmbeddedServer, fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blackholed connection (nothing answers, nothing closes) is noticed by the command
    timeout ``Database.connect`` gives every connection (here set the way a user does, by
    ``MDP_PG_COMMAND_TIMEOUT``), and retried on the policy's schedule."""
    monkeypatch.setenv("MDP_PG_COMMAND_TIMEOUT", "0.5")
    clock = FakeClock()  # the backoff schedule; the command timeouts are real
    items = quotes(6_000)
    async with asyncio.timeout(90), chaos_proxy(socket_of(pg_server)) as proxy:
        db = await proxied_database(proxy, fresh_dsn)
        try:
            dlq = DeadLetterQueue(tmp_path / "dlq")
            settings = CoordinatorSettings(
                capacity=500, workers=1, batch_size=100, flush_interval=0.01,
                circuit_failure_threshold=1_000,
            )  # fmt: skip
            policy = RetryPolicy(
                max_attempts=100, initial_backoff=0.1, max_backoff=1.0, rng=random.Random(5)
            )
            coord = WriteCoordinator(
                QuotesSink(db), settings, policy, dlq=dlq, clock=clock, sleep=clock.sleep
            )
            async with coord:

                async def produce() -> None:
                    for start in range(0, len(items), 50):
                        await coord.submit_many(items[start : start + 50])

                producer = asyncio.create_task(produce())
                while coord.stats().committed < 1_000:
                    await asyncio.sleep(0.01)
                assert coord.stats().retries == 0
                proxy.set_mode("blackhole")
                while coord.stats().retries < 3 or coord.stats().blocked_producers < 1:
                    await asyncio.sleep(0.05)
                h = coord.stats()
                assert not producer.done() and h.queue_depth == 500  # held back, bounded
                assert h.dead_lettered == 0
                proxy.set_mode("pass")
                await producer
                await coord.drain()
                h = coord.stats()
            expected = random.Random(5)
            schedule = [expected.uniform(0.0, policy.cap(n)) for n in (1, 2, 3)]
            assert clock.sleeps[:3] == schedule  # the first three retries of the stuck batch
            assert (h.committed, h.dead_lettered, h.submitted) == (6_000, 0, 6_000)
            keys, total = await table_keys(db)
            assert keys == {q.key for q in items} and total == 6_000
        finally:
            await db.close()
