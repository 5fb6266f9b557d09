"""Bugs the soak found, pinned down on their own (fast, event-driven)."""

from __future__ import annotations

import asyncio

from mdp_core.gateway import SimulatedGateway
from tests.ibkr.helpers import TIMEOUT, Collector, make_source


async def test_bars_missed_between_1100_and_1102_are_backfilled() -> None:
    """1100 then 1102 ("data maintained"): IB keeps the subscriptions but never sends the
    bars of the outage. The source must backfill them (the soak found them missing)."""
    async with (
        asyncio.timeout(TIMEOUT),
        SimulatedGateway(["SPY"], port=0, seed=4, time_compression=60.0) as gw,
    ):
        source = make_source(gw, ["SPY"], "bars")
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("SPY") >= 3)
        gw.connectivity_lost()  # 1100: data paused, a few bars go unsent
        await gw.wait_pumps(40)
        gw.connectivity_restored(data_lost=False)  # 1102: subscriptions kept
        await got.wait_for(gw, lambda: source.stats()["resubscribes"] == 1)
        count = got.count("SPY")
        await got.wait_for(gw, lambda: got.count("SPY") >= count + 3)
        await got.finish()
    bars = got.of("SPY")
    expected = gw.bars_between("SPY", bars[0].ts, bars[-1].ts.timestamp() + 5)
    assert bars == [b.to_bar(source="ibkr") for b in expected]  # none missing, none twice
    assert source.stats()["backfilled_bars"] > 0


async def test_an_outage_before_the_first_bar_is_backfilled_from_the_subscription() -> None:
    """A source that subscribed but had no bar yet when the link went down (1100 -> 1102)
    must backfill from its subscription, not only from a last bar it never had (the soak
    found the bars of such an outage missing after a restarted stream's first seconds)."""
    async with (
        asyncio.timeout(TIMEOUT),
        SimulatedGateway(["SPY"], port=0, seed=4, time_compression=60.0) as gw,
    ):
        gw.pause_data(True)  # no bar reaches the source before the outage
        source = make_source(gw, ["SPY"], "bars")
        await source.start()
        lost_at = gw.now()
        gw.connectivity_lost()  # 1100
        await gw.wait_pumps(40)
        gw.connectivity_restored(data_lost=False)  # 1102 (data resumes)
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("SPY") >= 1 and got.of("SPY")[-1].ts.timestamp()
                           > gw.now() - 30)  # fmt: skip
        await got.finish()
    bars = got.of("SPY")
    assert bars[0].ts.timestamp() <= lost_at  # the outage is covered from its start
    expected = gw.bars_between("SPY", bars[0].ts, bars[-1].ts.timestamp() + 5)
    assert bars == [b.to_bar(source="ibkr") for b in expected]
