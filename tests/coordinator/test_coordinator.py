"""WriteCoordinator with in-memory sinks: batching, backpressure, overflow, retries,
circuit, poison isolation, supervision, drain and shutdown (T7-T10)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest

from mdp_core.coordinator import (
    CoordinatorClosedError,
    CoordinatorSettings,
    QueueFullError,
    RetryPolicy,
    SpoolError,
    WriteCoordinator,
)
from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Bar, Quote
from tests.coordinator.helpers import FakeClock, MemorySink, quotes


def balanced(coord: WriteCoordinator) -> bool:
    h = coord.stats()
    return h.submitted == h.committed + h.dead_lettered + h.dropped


async def until(predicate, limit: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Yield to the loop until ``predicate()`` holds (bounded; no timing assumption)."""
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0)


@pytest.fixture
def dlq(tmp_path: Path) -> DeadLetterQueue:
    return DeadLetterQueue(tmp_path / "dlq")


async def test_everything_commits_in_batches_no_larger_than_batch_size(
    dlq: DeadLetterQueue,
) -> None:
    sink = MemorySink()
    items = quotes(1000)
    settings = CoordinatorSettings(batch_size=100, workers=3, flush_interval=10.0)
    async with asyncio.timeout(20), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        await coord.submit_many(items)
        await coord.drain()
        h = coord.stats()
    assert set(sink.rows) == {q.key for q in items}
    assert sink.batch_sizes == [100] * 10  # the queue was full: no partial batches
    assert (h.submitted, h.committed, h.new_rows, h.dead_lettered) == (1000, 1000, 1000, 0)
    assert h.in_flight == 0 and h.queue_depth == 0
    assert coord.stats().state == "stopped"
    assert dlq.count() == 0


async def test_partial_batch_is_flushed_after_flush_interval(dlq: DeadLetterQueue) -> None:
    sink = MemorySink()
    settings = CoordinatorSettings(batch_size=100, workers=1, flush_interval=0.05)
    async with asyncio.timeout(10), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        for q in quotes(3):
            await coord.submit(q)
        await sink.written.wait()  # no drain: the flush interval alone sends it
        assert sink.batch_sizes == [3]
        assert coord.stats().committed == 3


async def test_duplicates_count_as_committed_but_not_as_new_rows(dlq: DeadLetterQueue) -> None:
    sink = MemorySink()
    items = quotes(50)
    async with asyncio.timeout(10), WriteCoordinator(sink, dlq=dlq) as coord:
        await coord.submit_many(items)
        await coord.drain()
        await coord.submit_many(items[:20])
        await coord.drain()
        h = coord.stats()
    assert (h.committed, h.new_rows, h.duplicates_ignored) == (70, 50, 20)


async def test_submit_needs_a_running_coordinator(dlq: DeadLetterQueue) -> None:
    coord = WriteCoordinator(MemorySink(), dlq=dlq)
    with pytest.raises(CoordinatorClosedError, match="start"):
        await coord.submit(quotes(1)[0])
    async with coord:
        await coord.submit(quotes(1)[0])
    with pytest.raises(CoordinatorClosedError):
        await coord.submit(quotes(1)[0])
    with pytest.raises(CoordinatorClosedError):
        await coord.start()
    assert balanced(coord)


async def test_t7_stalled_sink_holds_producers_back_within_capacity(
    dlq: DeadLetterQueue,
) -> None:
    """T7: the sink never returns; the producer offers far more than fits."""
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    settings = CoordinatorSettings(
        capacity=200, workers=2, batch_size=25, flush_interval=0, drain_timeout=1
    )
    items = quotes(20_000)
    depths: list[int] = []
    async with asyncio.timeout(30), WriteCoordinator(sink, settings, dlq=dlq) as coord:

        async def produce() -> None:
            for q in items:
                await coord.submit(q)
                depths.append(coord.stats().queue_depth)

        producer = asyncio.create_task(produce())
        await until(
            lambda: (
                sink.entered == 2
                and coord.stats().blocked_producers == 1
                and coord.stats().queue_depth == 200
            )
        )
        for _ in range(100):  # however long we let it run, nothing more gets in
            await asyncio.sleep(0)
        h = coord.stats()
        assert not producer.done()
        assert h.queue_depth == 200
        assert h.in_flight == 2 * 25  # workers x batch size, nothing more
        assert h.submitted == 250
        assert sink.entered == 2
        gate.set()  # release the sink
        await producer
        await coord.drain()
    assert max(depths) <= 200
    assert set(sink.rows) == {q.key for q in items}
    assert balanced(coord) and coord.stats().dropped == 0


async def test_drop_oldest_drops_and_counts(dlq: DeadLetterQueue) -> None:
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    settings = CoordinatorSettings(
        capacity=10, workers=1, batch_size=5, flush_interval=0, overflow="drop_oldest",
        drain_timeout=1,
    )  # fmt: skip
    items = quotes(100)
    async with asyncio.timeout(10), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        await coord.submit(items[0])
        await until(lambda: sink.entered == 1)  # the first item is in flight, stalled
        for q in items[1:]:
            await coord.submit(q)
            assert coord.stats().queue_depth <= 10
        assert coord.stats().dropped == 89
        gate.set()
        await coord.drain()
        h = coord.stats()
    assert h.dropped == 89 and h.committed == 11
    assert set(sink.rows) == {q.key for q in [items[0], *items[-10:]]}  # newest kept
    assert balanced(coord)


async def test_drop_oldest_submit_many(dlq: DeadLetterQueue) -> None:
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    settings = CoordinatorSettings(
        capacity=10, workers=1, batch_size=5, overflow="drop_oldest", drain_timeout=2
    )
    async with asyncio.timeout(10), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        await coord.submit_many(quotes(25))
        assert coord.stats().queue_depth == 10 and coord.stats().dropped == 15
        gate.set()
        await coord.drain()
    assert balanced(coord) and coord.stats().committed == 10


async def test_overflow_error_raises_a_clear_error(dlq: DeadLetterQueue) -> None:
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    settings = CoordinatorSettings(
        capacity=10, workers=1, batch_size=5, overflow="error", drain_timeout=2
    )
    items = quotes(30)
    async with asyncio.timeout(10), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        await coord.submit_many(items[:10])
        with pytest.raises(QueueFullError, match=r"10/10 items.*overflow='error'"):
            await coord.submit(items[10])
        with pytest.raises(QueueFullError):
            await coord.submit_many(items[10:12])
        assert coord.stats().submitted == 10
        gate.set()
        await coord.drain()
    assert balanced(coord) and coord.stats().committed == 10


async def test_watermark_callbacks_fire_once_per_crossing(dlq: DeadLetterQueue) -> None:
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    events: list[tuple[str, int, int]] = []
    settings = CoordinatorSettings(
        capacity=10,
        drain_timeout=2,
        workers=1,
        batch_size=2,
        flush_interval=0,
        on_high_watermark=lambda depth, cap: events.append(("high", depth, cap)),
        on_low_watermark=lambda depth, cap: events.append(("low", depth, cap)),
    )
    async with asyncio.timeout(10), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        await coord.submit(quotes(1)[0])
        await until(lambda: sink.entered == 1)
        await coord.submit_many(quotes(9, start=1))
        assert events == [("high", 9, 10)]
        assert coord.stats().high_watermark
        gate.set()
        await coord.drain()
    assert events == [("high", 9, 10), ("low", 5, 10)]
    assert not coord.stats().high_watermark


async def test_transient_errors_are_retried_on_the_backoff_schedule(
    dlq: DeadLetterQueue,
) -> None:
    clock = FakeClock()
    failures = iter([asyncpg.SerializationError(), asyncpg.DeadlockDetectedError(), OSError()])
    sink = MemorySink(fault=lambda n, b: next(failures, None))
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, rng=random.Random(3))
    expected = random.Random(3)
    settings = CoordinatorSettings(workers=1, circuit_failure_threshold=10)
    coord = WriteCoordinator(sink, settings, policy, dlq=dlq, clock=clock, sleep=clock.sleep)
    async with asyncio.timeout(10), coord:
        await coord.submit_many(quotes(10))
        await coord.drain()
    assert clock.sleeps == [expected.uniform(0, 0.1), expected.uniform(0, 0.2),
                            expected.uniform(0, 0.4)]  # fmt: skip
    h = coord.stats()
    assert (h.retries, h.committed, h.dead_lettered, sink.calls) == (3, 10, 0, 4)
    assert h.last_error is not None and h.last_error.startswith("OSError")


async def test_exhausted_retries_spool_the_batch_with_its_error(dlq: DeadLetterQueue) -> None:
    clock = FakeClock()
    sink = MemorySink(
        fault=lambda n, b: asyncpg.ConnectionDoesNotExistError("connection was closed")
    )
    policy = RetryPolicy(max_attempts=3)
    settings = CoordinatorSettings(workers=1, batch_size=10, circuit_failure_threshold=100)
    items = quotes(25)
    coord = WriteCoordinator(
        sink, settings, policy, dlq=dlq, clock=clock, sleep=clock.sleep, name="s1"
    )
    async with asyncio.timeout(10), coord:
        await coord.submit_many(items)
        await coord.drain()
    h = coord.stats()
    assert (h.committed, h.dead_lettered, h.retries) == (0, 25, 6)
    records = dlq.list()
    assert sorted(r.record().key for r in records) == sorted(q.key for q in items)
    assert {r.attempts for r in records} == {3}
    assert {(r.error.type, r.error.sqlstate) for r in records} == {
        ("ConnectionDoesNotExistError", "08003")
    }
    assert {r.stream for r in records} == {"s1"} and {r.kind for r in records} == {"quote"}


async def test_permanent_errors_are_bisected_to_the_poison_rows(dlq: DeadLetterQueue) -> None:
    items = quotes(1000)
    poison = {items[3].key, items[500].key, items[999].key}
    sink = MemorySink(poison=poison)
    settings = CoordinatorSettings(workers=2, batch_size=1000)
    async with asyncio.timeout(20), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        await coord.submit_many(items)
        await coord.drain()
        h = coord.stats()
    assert set(sink.rows) == {q.key for q in items} - poison
    assert (h.committed, h.dead_lettered, h.retries) == (997, 3, 0)
    records = dlq.list()
    assert {r.record().key for r in records} == poison
    assert {(r.error.type, r.error.sqlstate, r.attempts) for r in records} == {
        ("CheckViolationError", "23514", 1)
    }
    assert h.workers_alive == 2 and h.worker_restarts == 0


@pytest.mark.parametrize(
    "error", [asyncpg.DiskFullError("could not extend file"), asyncpg.TooManyConnectionsError()]
)
async def test_t10_infrastructure_errors_open_the_circuit(
    dlq: DeadLetterQueue, error: Exception
) -> None:
    """T10: DiskFull / TooManyConnections are retried; the circuit opens and then only one
    probe per reset timeout reaches the database."""
    clock = FakeClock()
    sink = MemorySink(fault=lambda n, b: error if n <= 6 else None)
    sink.clock = clock
    states: list[str] = []
    settings = CoordinatorSettings(
        workers=1, batch_size=50, circuit_failure_threshold=3, circuit_reset_timeout=1.0
    )
    policy = RetryPolicy(
        max_attempts=10, initial_backoff=0.5, max_backoff=2.0, rng=random.Random(11)
    )
    coord = WriteCoordinator(sink, settings, policy, dlq=dlq, clock=clock, sleep=clock.sleep)

    def watch(n: int, batch: Sequence[Quote]) -> BaseException | None:
        states.append(coord.stats().circuit)
        return error if n <= 6 else None

    sink.fault = watch
    async with asyncio.timeout(10), coord:
        await coord.submit_many(quotes(50))
        await coord.drain()
        h = coord.stats()
    assert (h.committed, h.dead_lettered, h.retries, sink.calls) == (50, 0, 6, 7)
    assert h.circuit == "closed" and h.circuit_opened == 1
    assert states == ["closed"] * 3 + ["half_open"] * 4  # calls 4-7 are single probes
    gaps = [b - a for a, b in zip(sink.call_times[2:], sink.call_times[3:], strict=False)]
    assert all(gap >= 1.0 - 1e-9 for gap in gaps)  # nobody hammered the database while open


async def test_open_circuit_spools_after_the_retry_budget(dlq: DeadLetterQueue) -> None:
    """A database down longer than the budget: batches go to the spool; nothing waits
    forever, producers are not held back by a dead database."""
    clock = FakeClock()
    sink = MemorySink(fault=lambda n, b: ConnectionRefusedError(111, "refused"))
    settings = CoordinatorSettings(
        capacity=100, workers=2, batch_size=10, flush_interval=0,
        circuit_failure_threshold=2, circuit_reset_timeout=5.0,
    )  # fmt: skip
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=1.0)
    items = quotes(500)
    coord = WriteCoordinator(sink, settings, policy, dlq=dlq, clock=clock, sleep=clock.sleep)
    async with asyncio.timeout(20), coord:
        for q in items:
            await coord.submit(q)
        await coord.drain()
        h = coord.stats()
    assert (h.committed, h.dead_lettered) == (0, 500)
    assert h.circuit in ("open", "half_open")
    assert sink.calls < 500 // 10  # most batches never reached the dead database
    assert sorted(r.record().key for r in dlq.list()) == sorted(q.key for q in items)


async def test_t9_unexpected_exception_is_isolated_to_its_row(dlq: DeadLetterQueue) -> None:
    """T9: a bug in the sink that one row triggers is not retried as a batch and does not
    kill anything: the batch is bisected, that row alone is dead-lettered with the error,
    the rest commit and producers keep going."""
    clock = FakeClock()
    first, rest = quotes(10), quotes(90, start=10)
    bad = first[6].key

    def bug(n: int, batch: Sequence[Quote | Bar]) -> Exception | None:
        return RuntimeError("sink bug") if any(q.key == bad for q in batch) else None

    sink = MemorySink(fault=bug)
    settings = CoordinatorSettings(workers=2, batch_size=10, flush_interval=0)
    coord = WriteCoordinator(sink, settings, dlq=dlq, clock=clock, sleep=clock.sleep)
    async with asyncio.timeout(10), coord:
        await coord.submit_many(first)
        await coord.drain()
        h = coord.stats()
        assert (h.committed, h.dead_lettered, h.retries) == (9, 1, 0)
        assert h.worker_restarts == 0 and h.workers_alive == 2
        assert h.last_error == "RuntimeError: sink bug"
        for q in rest:  # producers are not stuck
            await coord.submit(q)
        await coord.drain()
    h = coord.stats()
    assert (h.committed, h.dead_lettered) == (99, 1) and balanced(coord)
    (record,) = dlq.list()
    assert record.record().key == bad
    assert (record.error.type, record.error.message) == ("RuntimeError", "sink bug")
    assert set(sink.rows) == {q.key for q in first + rest} - {bad}


async def test_a_failing_spool_crashes_the_worker_and_the_batch_is_retried(
    dlq: DeadLetterQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker itself crashes (the DLQ write fails once): the supervisor restarts it and
    puts the unfinished batch back; nothing is lost or counted twice."""
    clock = FakeClock()
    items = quotes(40)
    sink = MemorySink(poison={items[7].key})
    real_put = dlq.put
    calls = {"n": 0}

    def flaky_put(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(dlq, "put", flaky_put)
    settings = CoordinatorSettings(workers=1, batch_size=40)
    coord = WriteCoordinator(sink, settings, dlq=dlq, clock=clock, sleep=clock.sleep)
    async with asyncio.timeout(10), coord:
        await coord.submit_many(items)
        await coord.drain()
        h = coord.stats()
    assert h.worker_restarts == 1 and h.workers_alive == 1
    assert (h.committed, h.dead_lettered) == (39, 1) and balanced(coord)
    assert [r.record().key for r in dlq.list()] == [items[7].key]
    assert set(sink.rows) == {q.key for q in items} - {items[7].key}


async def test_t8_drain_timeout_spools_everything_left(dlq: DeadLetterQueue) -> None:
    """T8: a sink that never finishes; closing after the drain timeout spools the queued
    and the in-flight items (outcome unknown), none is lost."""
    gate = asyncio.Event()  # never set
    sink = MemorySink(gate=gate)
    settings = CoordinatorSettings(
        capacity=2000, workers=2, batch_size=50, flush_interval=0, drain_timeout=0.2
    )
    items = quotes(1000)
    coord = WriteCoordinator(sink, settings, dlq=dlq)
    async with asyncio.timeout(10):
        async with coord:
            await coord.submit_many(items)
            await until(lambda: sink.entered == 2)
    h = coord.stats()
    assert h.state == "stopped"
    assert (h.committed, h.dead_lettered, h.in_flight, h.queue_depth) == (0, 1000, 0, 0)
    records = dlq.list()
    assert sorted(r.record().key for r in records) == sorted(q.key for q in items)
    assert {r.error.type for r in records} == {"DrainTimeout"}
    assert "100 in flight" in records[0].error.message


async def test_t8_slow_sink_partly_committed_partly_spooled(dlq: DeadLetterQueue) -> None:
    class SlowSink(MemorySink):
        async def write(self, batch: Sequence[Quote]) -> int:
            await asyncio.sleep(0.02)  # the slowness is the fault under test
            return await super().write(batch)

    sink = SlowSink()
    settings = CoordinatorSettings(workers=2, batch_size=20, flush_interval=0, drain_timeout=0.1)
    items = quotes(2000)
    async with asyncio.timeout(10), WriteCoordinator(sink, settings, dlq=dlq) as coord:
        await coord.submit_many(items)
    h = coord.stats()
    spooled = {r.record().key for r in dlq.list()}
    assert h.committed == len(sink.rows) and h.dead_lettered == len(spooled)
    assert balanced(coord) and h.dead_lettered > 0
    assert set(sink.rows) | spooled == {q.key for q in items}  # none lost
    assert not set(sink.rows) & spooled


async def test_close_wakes_blocked_producers(dlq: DeadLetterQueue) -> None:
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    settings = CoordinatorSettings(capacity=5, workers=1, batch_size=5, drain_timeout=0.05)
    coord = WriteCoordinator(sink, settings, dlq=dlq)
    await coord.start()
    await coord.submit_many(quotes(10))
    blocked = asyncio.create_task(coord.submit(quotes(1, start=99)[0]))
    await until(lambda: coord.stats().blocked_producers == 1)
    async with asyncio.timeout(10):
        await coord.close()
        with pytest.raises(CoordinatorClosedError, match="closed while submit"):
            await blocked
    assert balanced(coord) and coord.stats().dead_lettered == 10


async def test_cancelled_close_still_spools(dlq: DeadLetterQueue) -> None:
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    settings = CoordinatorSettings(workers=1, batch_size=5, drain_timeout=30)
    coord = WriteCoordinator(sink, settings, dlq=dlq)
    await coord.start()
    await coord.submit_many(quotes(12))
    closing = asyncio.create_task(coord.close())
    await until(lambda: coord.stats().state == "draining")
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closing, 10)
    assert coord.stats().state == "stopped"
    assert balanced(coord) and dlq.count() == 12


async def test_health_reports_throughput_and_state(dlq: DeadLetterQueue) -> None:
    clock = FakeClock()
    sink = MemorySink()
    coord = WriteCoordinator(sink, dlq=dlq, clock=clock, sleep=clock.sleep, name="h")
    assert coord.stats().state == "starting"
    async with coord:
        assert coord.stats().state == "running"
        clock.now = 1.0
        await coord.submit_many(quotes(100))
        await coord.drain()
        clock.now = 2.0
        h = coord.stats()
        assert h.throughput == pytest.approx(50.0)  # 100 items over 2 (fake) seconds
        clock.now = 100.0
        assert coord.stats().throughput == 0.0  # nothing in the last window
        data = h.to_dict()
        assert data["pending"] == 0 and data["name"] == "h" and data["circuit"] == "closed"
    assert coord.stats().state == "stopped"
    assert "committed=100" in repr(coord)


async def test_a_spool_that_fails_at_close_is_reported_and_close_never_hangs(
    dlq: DeadLetterQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink stalls and the spool is read-only: close() keeps what it could not persist,
    counts it, raises SpoolError naming the count; a second close() raises it again at once
    (tests/store/test_cli_stream.py does this with a real file-size limit)."""
    gate = asyncio.Event()  # never set: a stalled database
    sink = MemorySink(gate=gate)

    def read_only(*args: object, **kwargs: object) -> int:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(dlq, "put", read_only)
    settings = CoordinatorSettings(workers=1, batch_size=10, drain_timeout=0.05)
    coord = WriteCoordinator(sink, settings, dlq=dlq)
    await coord.start()
    await coord.submit_many(quotes(25))
    with pytest.raises(SpoolError, match="25 items could not be written to the dead-letter"):
        await asyncio.wait_for(coord.close(), 10)
    h = coord.stats()
    assert (h.submitted, h.committed, h.dead_lettered, h.unpersisted) == (25, 0, 0, 25)
    assert h.pending == 25 and h.state == "stopped"
    with pytest.raises(SpoolError):
        await asyncio.wait_for(coord.close(), 1)  # again, at once
