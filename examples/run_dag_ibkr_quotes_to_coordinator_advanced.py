"""IBKR quotes tuned for throughput: more symbols, more workers, bigger batches, and a
channel that conflates instead of blocking.

    python examples/run_dag_ibkr_quotes_to_coordinator_advanced.py --seconds 10

Tuning, and why:

- ``overflow="conflate"`` on the channel: if the database falls behind, the channel keeps
  only the *latest* pending quote per symbol instead of making the feed wait. For quotes,
  freshness usually beats completeness; every replaced quote is counted (``conflated``)
  and reported as dropped below. Use ``"block"`` (the default) when every quote must land.
- ``submit_many`` of whole channel batches: one call per batch, not per quote.
- 8 workers x batches of 2 000: more COPYs in flight; PostgreSQL absorbs large batches far
  better than many small ones. ``flush_interval`` bounds the latency of a partial batch.
- a deep coordinator queue (100 000) rides out short database stalls; past it, producers
  wait (``overflow="block"``), so memory stays bounded.
"""

from __future__ import annotations

from _common import Example, run

from mdp_core import CoordinatorRuntimeSettings, RetryPolicy, RuntimeOrchestrator, WriteCoordinator
from mdp_core.store import QuotesSink

SYMBOLS = "AAPL,MSFT,SPY,QQQ,NVDA,AMZN,GOOGL,META,TSLA,IWM,AMD,NFLX,INTC,ORCL,CSCO,ADBE"


async def pipeline(ex: Example) -> None:
    """IBKR quotes (conflating channel, 8 workers, batches of 2000) into mdp.quotes."""
    settings = CoordinatorRuntimeSettings(
        coordinator_capacity=100_000, coordinator_workers=8,
        coordinator_batch_size=2_000, coordinator_flush_interval=0.1,
    )  # fmt: skip
    async with RuntimeOrchestrator() as rt, QuotesSink(ex.db) as sink:
        quotes = await rt.quotes_to_channel(
            ex.symbols, max_buffer=len(ex.symbols), overflow="conflate",
            provider="ibkr", ibkr_settings=ex.ibkr,
        )  # fmt: skip
        ex.on_stop(rt.stop)
        coordinator = WriteCoordinator(sink=sink, settings=settings, retry_policy=RetryPolicy())
        async with coordinator as coord:
            async for batch in quotes.iter_batches(2_000, max_wait=0.1):
                await coord.submit_many(batch)
            await coord.drain()
    health, channel = coord.stats(), quotes.stats()
    print(f"channel: {channel.accepted:,} quotes in, {channel.conflated:,} conflated (replaced)")
    ex.summary(health.committed, health.dead_lettered, health.dropped + channel.conflated)


if __name__ == "__main__":
    run(pipeline, symbols=SYMBOLS, tick_interval=0.01)
