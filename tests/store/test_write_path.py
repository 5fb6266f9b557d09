"""The sinks' two write paths: ``WritePathPolicy`` on a fake clock, and the fast path with its
idempotent fallback on the real PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink, QuotesSink
from mdp_core.store.write_path import WritePathCounts, WritePathPolicy
from tests.store.helpers import make_bars, make_quotes


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _decisions(policy: WritePathPolicy, n: int) -> list[bool]:
    return [policy.use_fast() for _ in range(n)]


# -- the policy ---------------------------------------------------------------------------


def test_a_conflict_holds_the_idempotent_path_for_n_batches() -> None:
    clock = Clock()
    policy = WritePathPolicy(hold_batches=3, hold_seconds=60.0, clock=clock)
    assert _decisions(policy, 2) == [True, True]
    policy.conflict()
    assert policy.holding
    assert _decisions(policy, 4) == [False, False, False, True]
    assert not policy.holding


def test_the_hold_ends_after_t_seconds_when_that_comes_first() -> None:
    clock = Clock()
    policy = WritePathPolicy(hold_batches=1000, hold_seconds=5.0, clock=clock)
    policy.conflict()
    assert _decisions(policy, 2) == [False, False]
    clock.now += 4.9
    assert policy.use_fast() is False
    clock.now += 0.1
    assert _decisions(policy, 2) == [True, True]


def test_a_conflict_right_after_a_hold_doubles_the_next_hold_up_to_the_cap() -> None:
    clock = Clock()
    policy = WritePathPolicy(hold_batches=2, hold_seconds=60.0, max_hold_factor=4, clock=clock)
    policy.conflict()
    assert _decisions(policy, 3) == [False, False, True]
    policy.conflict()  # the probe conflicted: twice as long
    assert _decisions(policy, 5) == [False] * 4 + [True]
    policy.conflict()  # again: 4 x, the cap
    assert _decisions(policy, 9) == [False] * 8 + [True]
    policy.conflict()  # capped
    assert _decisions(policy, 9) == [False] * 8 + [True]
    policy.fast_ok()  # a probe went through: back to the base hold
    policy.conflict()
    assert _decisions(policy, 3) == [False, False, True]


def test_a_doubled_hold_also_doubles_its_time() -> None:
    clock = Clock()
    policy = WritePathPolicy(hold_batches=1000, hold_seconds=5.0, clock=clock)
    policy.conflict()
    clock.now += 5.0
    assert policy.use_fast() is True
    policy.conflict()
    clock.now += 9.9
    assert policy.use_fast() is False
    clock.now += 0.1
    assert policy.use_fast() is True


def test_start_idempotent_begins_with_a_hold() -> None:
    clock = Clock()
    policy = WritePathPolicy(hold_batches=2, hold_seconds=60.0, start_idempotent=True, clock=clock)
    assert _decisions(policy, 3) == [False, False, True]


def test_no_hold_means_always_fast() -> None:
    policy = WritePathPolicy(hold_batches=0, clock=Clock())
    policy.conflict()
    assert _decisions(policy, 3) == [True, True, True]


@pytest.mark.parametrize(
    "kwargs", [{"hold_batches": -1}, {"hold_seconds": -0.5}, {"max_hold_factor": 0}]
)
def test_invalid_settings_are_refused_naming_the_value(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        WritePathPolicy(**kwargs)  # type: ignore[arg-type]


def test_counts_add_up_per_path() -> None:
    counts = WritePathCounts()
    counts.add("fast", 10)
    counts.add("fast", 5)
    counts.add("fallback", 7)
    counts.add("idempotent", 3)
    assert counts.to_dict() == {
        "fast_batches": 2,
        "fast_rows": 15,
        "fallback_batches": 1,
        "fallback_rows": 7,
        "idempotent_batches": 1,
        "idempotent_rows": 3,
    }


# -- the sinks on PostgreSQL ----------------------------------------------------------------


def _always_fast() -> WritePathPolicy:
    """A policy that tries the fast path on every batch (no hold after a conflict)."""
    return WritePathPolicy(hold_batches=0)


async def test_new_batches_go_in_by_the_fast_path(db: Database) -> None:
    async with QuotesSink(db) as qs, BarsSink(db) as bs:
        assert await qs.write(make_quotes(300)) == 300
        assert await bs.write(make_bars(200)) == 200
        assert (qs.paths.fast_batches, qs.paths.fast_rows) == (1, 300)
        assert (bs.paths.fast_batches, bs.paths.fast_rows) == (1, 200)
        assert qs.paths.fallback_batches == bs.paths.fallback_batches == 0
    assert await db.count("quotes") == 300
    assert await db.count("bars") == 200


async def test_rewriting_committed_rows_adds_nothing_and_reports_zero_new(db: Database) -> None:
    quotes, bars = make_quotes(400), make_bars(400)
    async with QuotesSink(db, _always_fast()) as qs, BarsSink(db, _always_fast()) as bs:
        assert await qs.write(quotes) == 400
        assert await bs.write(bars) == 400
        before = await db.pool.fetchval("SELECT max(ingested_at) FROM mdp.quotes")
        assert await qs.write(quotes) == 0
        assert await bs.write(bars) == 0
        assert (qs.paths.fast_batches, qs.paths.fallback_batches) == (1, 1)
        assert (bs.paths.fast_batches, bs.paths.fallback_batches) == (1, 1)
        # a batch half stored, half new: only the new half goes in, by the fallback
        assert await qs.write(make_quotes(800)) == 400
        assert (qs.paths.fallback_batches, qs.paths.fallback_rows) == (2, 1200)
    assert await db.count("quotes") == 800
    assert await db.count("bars") == 400
    # the stored rows were not touched by the rewrite
    after = await db.pool.fetchval(
        "SELECT max(ingested_at) FROM mdp.quotes WHERE ts <= $1", quotes[-1].ts
    )
    assert after <= before


async def test_in_batch_duplicates_are_stored_once_via_the_fallback(db: Database) -> None:
    quotes, bars = make_quotes(20), make_bars(12)
    async with QuotesSink(db) as qs, BarsSink(db) as bs:
        assert await qs.write(quotes + quotes[:7] + [quotes[0]]) == 20
        assert await bs.write(bars + bars[3:5]) == 12
        assert (qs.paths.fast_batches, qs.paths.fallback_batches) == (0, 1)
        assert (bs.paths.fast_batches, bs.paths.fallback_batches) == (0, 1)
    assert await db.count("quotes") == 20
    assert await db.count("bars") == 12
    distinct = await db.pool.fetchval("SELECT count(DISTINCT (symbol, ts)) FROM mdp.quotes")
    assert distinct == 20


async def test_a_complete_bar_replaces_a_stored_partial_one_through_the_fallback(
    db: Database,
) -> None:
    complete = make_bars(4)
    partial = [replace(b, close=b.close - 0.25, volume=1.0, partial=True) for b in complete[:2]]
    async with BarsSink(db, _always_fast()) as sink:
        assert await sink.write(partial) == 2  # a stream stopped mid-window: fast path
        assert sink.paths.fast_batches == 1
        # the complete bars of the same keys (plus two new ones) conflict with the partial
        # ones: the fast path fails, the fallback stores two and replaces two
        assert await sink.write(complete) == 4
        assert (sink.paths.fast_batches, sink.paths.fallback_batches) == (1, 1)
        # written again: nothing new, nothing replaced
        assert await sink.write(complete) == 0
    rows = await db.pool.fetch(
        "SELECT symbol, ts, close, volume, partial FROM mdp.bars ORDER BY ts, symbol"
    )
    assert [(r["symbol"], r["ts"], r["close"], r["volume"], r["partial"]) for r in rows] == [
        (b.symbol, b.ts, b.close, b.volume, False) for b in complete
    ]


async def test_a_sink_holding_the_idempotent_path_does_not_try_the_fast_one(
    db: Database,
) -> None:
    policy = WritePathPolicy(hold_batches=2, hold_seconds=3600.0, start_idempotent=True)
    quotes = make_quotes(30)
    async with QuotesSink(db, policy) as sink:
        for part in (quotes[:10], quotes[10:20], quotes[20:]):
            assert await sink.write(part) == 10
        assert sink.paths.to_dict() == {
            "fast_batches": 1,
            "fast_rows": 10,
            "fallback_batches": 0,
            "fallback_rows": 0,
            "idempotent_batches": 2,
            "idempotent_rows": 20,
        }
    assert await db.count("quotes") == 30


async def test_a_conflict_puts_the_sink_on_the_idempotent_path(db: Database) -> None:
    quotes = make_quotes(40)
    policy = WritePathPolicy(hold_batches=2, hold_seconds=3600.0)
    async with QuotesSink(db, policy) as sink:
        assert await sink.write(quotes[:10]) == 10  # fast
        assert await sink.write(quotes[:20]) == 10  # conflict: fallback, then a hold
        assert await sink.write(quotes[20:25]) == 5  # idempotent
        assert await sink.write(quotes[25:30]) == 5  # idempotent
        assert await sink.write(quotes[30:]) == 10  # fast again
        p = sink.paths
        assert (p.fast_batches, p.fallback_batches, p.idempotent_batches) == (2, 1, 2)
    assert await db.count("quotes") == 40
