"""IBKR 5-second bars -> channel -> WriteCoordinator -> PostgreSQL.

    python examples/run_dag_ibkr_to_coordinator.py --seconds 10

The WriteCoordinator batches records over several workers, retries transient database
errors with backoff and jitter, and spools what it cannot write to the dead-letter queue
(``mdp dlq replay`` puts it back), so nothing is lost if PostgreSQL goes away for a while.
Leaving its ``async with`` drains it: everything submitted is committed or dead-lettered.
"""

from __future__ import annotations

from _common import Example, run

from mdp_core import CoordinatorRuntimeSettings, RetryPolicy, RuntimeOrchestrator, WriteCoordinator
from mdp_core.store import BarsSink


async def pipeline(ex: Example) -> None:
    """IBKR 5-second bars through the WriteCoordinator into mdp.bars."""
    settings = CoordinatorRuntimeSettings(
        coordinator_capacity=20_000, coordinator_workers=4,
        coordinator_batch_size=500, coordinator_flush_interval=0.25,
    )  # fmt: skip
    async with RuntimeOrchestrator() as rt, BarsSink(ex.db) as sink:
        bars = await rt.bars_to_channel(
            ex.symbols, resolution="5s", max_buffer=2048, provider="ibkr", ibkr_settings=ex.ibkr
        )
        ex.on_stop(rt.stop)
        async with WriteCoordinator(
            sink=sink, settings=settings, retry_policy=RetryPolicy(max_attempts=5)
        ) as coord:
            async for bar in bars.iter():
                await coord.submit(bar)
            await coord.drain()
    health = coord.stats()
    ex.summary(health.committed, health.dead_lettered, health.dropped)


if __name__ == "__main__":
    run(pipeline, symbols="AAPL,MSFT,SPY")
