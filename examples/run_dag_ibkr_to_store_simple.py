"""The simplest pipeline: IBKR 5-second bars -> a bounded channel -> PostgreSQL.

    python examples/run_dag_ibkr_to_store_simple.py --seconds 10

No IB configured (MDP_IBKR_HOST / MDP_IBKR_PORT unset)? A simulated IB Gateway is started in
this process. No MDP_PG_DSN? The embedded PostgreSQL under .mdp/ is used. Ctrl-C stops the
feed, writes what is still in the channel, and prints a summary.

Batches go straight to the sink: one COPY + INSERT ... ON CONFLICT DO NOTHING per batch,
so a bar stored twice is stored once. No retries or dead-letter queue here: see
run_dag_ibkr_to_coordinator.py for that.
"""

from __future__ import annotations

from _common import Example, run

from mdp_core import RuntimeOrchestrator
from mdp_core.store import BarsSink


async def pipeline(ex: Example) -> None:
    """IBKR 5-second bars straight into mdp.bars."""
    written = 0
    async with RuntimeOrchestrator() as rt, BarsSink(ex.db) as sink:
        bars = await rt.bars_to_channel(
            ex.symbols, resolution="5s", max_buffer=2048, provider="ibkr", ibkr_settings=ex.ibkr
        )
        ex.on_stop(rt.stop)  # stops the provider; the loop below then drains the channel
        async for batch in bars.iter_batches(500, max_wait=0.5):
            written += await sink.write(batch)
    ex.summary(written)


if __name__ == "__main__":
    run(pipeline, symbols="AAPL,MSFT,SPY")
