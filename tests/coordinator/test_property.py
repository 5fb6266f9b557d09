"""T1 conservation, as a property: random transient, permanent and unexpected sink errors,
random sizes and policies; after drain, submitted == committed + dead_lettered + dropped
exactly, every committed item is in the store once, every dead-lettered item is spooled."""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Sequence

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdp_core.coordinator import CoordinatorSettings, RetryPolicy, WriteCoordinator
from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Quote
from tests.coordinator.helpers import FakeClock, MemorySink, quotes

ERRORS = {
    "transient": lambda: asyncpg.ConnectionDoesNotExistError("connection was closed"),
    "deadlock": lambda: asyncpg.DeadlockDetectedError("deadlock detected"),
    "timeout": lambda: TimeoutError(),
    "fatal": lambda: RuntimeError("sink bug"),
}


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 400))
    return {
        "n": n,
        "capacity": draw(st.integers(1, 200)),
        "workers": draw(st.integers(1, 4)),
        "batch_size": draw(st.integers(1, 64)),
        "overflow": draw(st.sampled_from(["block", "drop_oldest"])),
        "max_attempts": draw(st.integers(1, 4)),
        "poison": draw(st.sets(st.integers(0, n - 1), max_size=6)),
        # per sink call: no fault, or one of ERRORS (calls past the list never fail)
        "faults": draw(st.lists(st.sampled_from([None, None, *ERRORS]), max_size=40)),
        "chunk": draw(st.integers(1, 50)),
        "seed": draw(st.integers(0, 2**16)),
    }


async def run_scenario(sc: dict[str, object], directory: str) -> None:
    n = sc["n"]
    assert isinstance(n, int)
    items = quotes(n)
    poison_idx = sc["poison"]
    assert isinstance(poison_idx, set)
    poison = {items[i].key for i in poison_idx}
    faults = sc["faults"]
    assert isinstance(faults, list)

    def fault(call: int, batch: Sequence[Quote]) -> BaseException | None:
        name = faults[call - 1] if call <= len(faults) else None
        return ERRORS[name]() if name else None

    clock = FakeClock()
    sink = MemorySink(fault=fault, poison=poison)
    dlq = DeadLetterQueue(directory, fsync=False)
    coord = WriteCoordinator(
        sink,
        CoordinatorSettings(
            capacity=sc["capacity"],  # type: ignore[arg-type]
            workers=sc["workers"],  # type: ignore[arg-type]
            batch_size=sc["batch_size"],  # type: ignore[arg-type]
            flush_interval=0.001,
            overflow=sc["overflow"],  # type: ignore[arg-type]
            circuit_failure_threshold=3,
            circuit_reset_timeout=0.05,
        ),
        RetryPolicy(
            max_attempts=sc["max_attempts"],  # type: ignore[arg-type]
            initial_backoff=0.01,
            rng=random.Random(sc["seed"]),  # type: ignore[arg-type]
        ),
        dlq=dlq,
        clock=clock,
        sleep=clock.sleep,
    )
    chunk = sc["chunk"]
    assert isinstance(chunk, int)
    async with asyncio.timeout(30):
        async with coord:
            for start in range(0, n, chunk):
                if start % 2:
                    await coord.submit_many(items[start : start + chunk])
                else:
                    for q in items[start : start + chunk]:
                        await coord.submit(q)
            await coord.drain()
            h = coord.stats()
            assert h.queue_depth == 0 and h.in_flight == 0
    h = coord.stats()
    spooled = [r.record().key for r in dlq.list()]
    # G2: conservation, exactly
    assert h.submitted == n
    assert h.submitted == h.committed + h.dead_lettered + h.dropped
    # committed items are in the store, once each (distinct keys); spooled ones are durable
    assert len(sink.rows) == h.committed == h.new_rows
    assert len(spooled) == len(set(spooled)) == h.dead_lettered
    assert not set(sink.rows) & set(spooled)
    assert len(set(sink.rows) | set(spooled)) + h.dropped == n
    # poison never reaches the store; unless dropped by overflow it is in the spool
    assert not poison & set(sink.rows)
    if h.dropped == 0:
        assert poison <= set(spooled)
    if sc["overflow"] == "block":
        assert h.dropped == 0


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(scenarios())
def test_t1_conservation_under_random_faults(sc: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory(prefix="mdp-t1-") as directory:
        asyncio.run(run_scenario(sc, directory))
