"""IBKR quotes -> channel -> WriteCoordinator -> PostgreSQL.

    python examples/run_dag_ibkr_quotes_to_coordinator.py --seconds 10

One Quote per ticker update from IB (bid, ask, last and their sizes, stamped with the time
the client received them, UTC), stored in mdp.quotes keyed by (symbol, ts).
"""

from __future__ import annotations

from _common import Example, run

from mdp_core import CoordinatorRuntimeSettings, RetryPolicy, RuntimeOrchestrator, WriteCoordinator
from mdp_core.store import QuotesSink


async def pipeline(ex: Example) -> None:
    """IBKR quotes through the WriteCoordinator into mdp.quotes."""
    async with RuntimeOrchestrator() as rt, QuotesSink(ex.db) as sink:
        quotes = await rt.quotes_to_channel(
            ex.symbols, max_buffer=4096, provider="ibkr", ibkr_settings=ex.ibkr
        )
        ex.on_stop(rt.stop)
        async with WriteCoordinator(
            sink=sink, settings=CoordinatorRuntimeSettings(), retry_policy=RetryPolicy()
        ) as coord:
            async for batch in quotes.iter_batches(500, max_wait=0.25):
                await coord.submit_many(batch)
            await coord.drain()
    health = coord.stats()
    ex.summary(health.committed, health.dead_lettered, health.dropped)


if __name__ == "__main__":
    run(pipeline, symbols="AAPL,MSFT,SPY")
