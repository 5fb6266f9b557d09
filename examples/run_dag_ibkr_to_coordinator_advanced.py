"""IBKR 5-second bars with guard rails: throttle, de-duplication, a dead-letter queue, and
a health line every two seconds.

    python examples/run_dag_ibkr_to_coordinator_advanced.py --seconds 10

- ``throttle(rate_limit=500)``: at most 500 bars/s towards the database; ``mode="delay"``
  applies backpressure (the channel fills, then the IBKR source pauses its socket) instead
  of dropping.
- ``deduplicate``: a bar seen again within 60 s (same symbol and start) is dropped and
  counted. The IBKR source already de-duplicates its own bars across reconnects; this
  guards a stream merged from several sources.
- ``DeadLetterQueue``: batches that still fail after the retries, and rows the database
  refuses, are spooled (fsynced) under $MDP_HOME/dlq; ``mdp dlq replay`` writes them later.
- the health line: records received from IB, the channel depth, what the coordinator
  committed / retried / dead-lettered, its queue and circuit breaker, and duplicates dropped.
"""

from __future__ import annotations

import asyncio

from _common import Example, run

from mdp_core import (
    CoordinatorRuntimeSettings,
    DeadLetterQueue,
    RetryPolicy,
    RuntimeOrchestrator,
    WriteCoordinator,
    deduplicate,
    throttle,
)
from mdp_core.operators import OperatorStats
from mdp_core.store import BarsSink


async def print_health(
    rt: RuntimeOrchestrator, coord: WriteCoordinator, dedupe: OperatorStats, every: float
) -> None:
    while True:
        await asyncio.sleep(every)
        (stream,) = rt.stats().values()
        h = coord.stats()
        print(
            f"health: received {stream.received:,} ({stream.state}), "
            f"channel {stream.channel.depth}, "
            f"committed {h.committed:,} ({h.throughput:,.0f}/s), queue {h.queue_depth}, "
            f"retries {h.retries}, dead-lettered {h.dead_lettered}, circuit {h.circuit}, "
            f"duplicates {dedupe.duplicates}",
            flush=True,
        )


async def pipeline(ex: Example) -> None:
    """IBKR 5-second bars -> throttle -> deduplicate -> WriteCoordinator (+DLQ) -> mdp.bars."""
    dlq = DeadLetterQueue()  # $MDP_HOME/dlq
    settings = CoordinatorRuntimeSettings(
        coordinator_capacity=20_000, coordinator_workers=4,
        coordinator_batch_size=500, coordinator_flush_interval=0.25,
    )  # fmt: skip
    retry = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=2.0)
    dedupe_stats = OperatorStats()
    async with RuntimeOrchestrator() as rt, BarsSink(ex.db) as sink:
        bars = await rt.bars_to_channel(
            ex.symbols, resolution="5s", max_buffer=2048, provider="ibkr", ibkr_settings=ex.ibkr
        )
        ex.on_stop(rt.stop)
        stream = throttle(bars.iter(), rate_limit=500)
        stream = deduplicate(
            stream, key_fn=lambda b: (b.symbol, b.ts), ttl=60.0, stats=dedupe_stats
        )
        async with WriteCoordinator(
            sink=sink, settings=settings, retry_policy=retry, dlq=dlq
        ) as coord:
            monitor = asyncio.create_task(print_health(rt, coord, dedupe_stats, every=2.0))
            try:
                async for bar in stream:
                    await coord.submit(bar)
                await coord.drain()
            finally:
                monitor.cancel()
    health = coord.stats()
    print(f"dead-letter queue: {dlq.directory}")
    ex.summary(health.committed, health.dead_lettered, health.dropped + dedupe_stats.duplicates)


if __name__ == "__main__":
    run(pipeline, symbols="AAPL,MSFT,SPY,QQQ,NVDA")
