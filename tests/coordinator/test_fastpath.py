"""The coordinator over the sinks' fast path (direct COPY) on the real PostgreSQL: conflicts
mid-stream fall back to the idempotent path and the accounting balances against what was
generated; a write whose outcome is lost is written again without duplicating anything."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from mdp_core.coordinator import CoordinatorSettings, RetryPolicy, WriteCoordinator
from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Quote
from mdp_core.store.database import Database
from mdp_core.store.sinks import QuotesSink
from mdp_core.store.write_path import WritePathPolicy
from tests.coordinator.helpers import quotes
from tests.coordinator.test_postgres import as_sent, stored_quotes

pytestmark = pytest.mark.timeout(120)


def _paths_balance(stats_paths: dict[str, int], committed: int) -> bool:
    """Every committed item went in by exactly one path."""
    rows = ("fast_rows", "fallback_rows", "idempotent_rows")
    return sum(stats_paths[k] for k in rows) == committed


async def test_conflicts_mid_stream_fall_back_and_the_accounting_balances(
    db: Database, tmp_path: Path
) -> None:
    """A stream whose middle is stored already (an overlapping replay) and that repeats some
    of its own quotes: every generated quote is stored once, the stored ones are not
    counted as new, and submitted == committed + dead-lettered + dropped."""
    items = quotes(12_000, symbol="MID")
    async with QuotesSink(db) as sink:
        assert await sink.write(items[5_000:7_000]) == 2_000  # stored before the stream
    generated: list[Quote] = items[:3_000] + items[100:160] + items[3_000:]  # 60 repeats
    dlq = DeadLetterQueue(tmp_path / "dlq")
    settings = CoordinatorSettings(workers=2, batch_size=1_000, flush_interval=0)
    # a hold of one batch: the stored middle (three batches) conflicts at least twice
    sink = QuotesSink(db, WritePathPolicy(hold_batches=1, hold_seconds=3600.0))
    async with asyncio.timeout(60):
        async with WriteCoordinator(sink, settings, RetryPolicy(max_attempts=3), dlq=dlq) as coord:
            await coord.submit_many(generated)
            await coord.drain()
            h = coord.stats()
    assert h.submitted == len(generated) == 12_060
    assert (h.committed, h.dead_lettered, h.dropped) == (len(generated), 0, 0)
    assert h.new_rows == 12_000 - 2_000  # the stored middle is not new, nor the repeats
    assert h.duplicates_ignored == 2_000 + 60
    assert await stored_quotes(db) == as_sent(items)
    assert dlq.count() == 0
    paths = h.write_paths
    assert paths == sink.paths.to_dict()
    assert paths["fallback_batches"] >= 2  # the batch with the repeats, the stored middle
    assert paths["fast_batches"] >= 1 and paths["idempotent_batches"] >= 1
    assert _paths_balance(paths, h.committed)


class _LostCommitReply:
    """``QuotesSink`` whose first successful write then reports a lost connection: the
    COMMIT went through but its reply never arrived (outcome unknown to the caller)."""

    kind = "quote"

    def __init__(self, inner: QuotesSink) -> None:
        self.inner = inner
        self.paths = inner.paths
        self.lost = 0

    async def write(self, batch: Sequence[Quote]) -> int:
        new_rows = await self.inner.write(batch)
        if self.lost == 0:
            self.lost += 1
            raise ConnectionResetError("connection lost while waiting for COMMIT's reply")
        return new_rows


async def test_a_batch_committed_on_the_fast_path_then_retried_is_not_duplicated(
    db: Database, tmp_path: Path
) -> None:
    """The retry of a committed batch conflicts with itself on the fast path: the fallback
    stores nothing twice and reports no new rows for it."""
    items = quotes(3_000, symbol="LOST")
    dlq = DeadLetterQueue(tmp_path / "dlq")
    settings = CoordinatorSettings(workers=1, batch_size=1_000, flush_interval=0)
    sink = _LostCommitReply(QuotesSink(db, WritePathPolicy(hold_batches=0)))
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    async with asyncio.timeout(60):
        async with WriteCoordinator(sink, settings, policy, dlq=dlq) as coord:
            await coord.submit_many(items)
            await coord.drain()
            h = coord.stats()
    assert sink.lost == 1 and h.retries == 1
    assert (h.submitted, h.committed, h.dead_lettered) == (3_000, 3_000, 0)
    assert h.new_rows == 2_000  # the first batch's new rows were in the lost reply
    assert await stored_quotes(db) == as_sent(items)
    # the lost write went in fast, its retry by the fallback; the other two fast
    paths = h.write_paths
    assert (paths["fast_rows"], paths["fallback_rows"], paths["idempotent_rows"]) == (
        3_000, 1_000, 0,
    )  # fmt: skip
