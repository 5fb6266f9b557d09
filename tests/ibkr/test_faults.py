"""Reliability of IBKRStreamSource: a restarted gateway, IB's connectivity errors, silent
data, duplicate client ids, refused connections, the backoff."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest

from mdp_core import CoordinatorSettings, DeadLetterQueue, RetryPolicy, WriteCoordinator
from mdp_core.gateway import SimulatedGateway
from mdp_core.models import Bar
from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr import DuplicateClientIdError, IBKRStreamSource
from mdp_core.settings import IBKRSettings
from mdp_core.store import BarsSink, Database
from tests.ibkr.helpers import (
    TIMEOUT,
    Collector,
    make_source,
    new_ib,
    pumps_until,
    quote_values,
    settings_for,
    tick_values,
)

REQ_MKT_DATA, REQ_REAL_TIME_BARS, REQ_HISTORICAL_DATA, START_API = 1, 50, 20, 71


async def test_restart_reconnects_backfills_and_stores_every_bar_once(
    gw: SimulatedGateway, fresh_dsn: str, tmp_path: Path
) -> None:
    symbols = ["AAPL", "MSFT"]
    async with asyncio.timeout(60):
        source = make_source(gw, symbols, "bars")
        await source.start()
        db = await Database.connect(fresh_dsn)
        sink = BarsSink(db)
        coord: WriteCoordinator[Bar] = WriteCoordinator(
            sink, CoordinatorSettings(workers=2, batch_size=50, flush_interval=0.05),
            RetryPolicy(max_attempts=3), DeadLetterQueue(tmp_path / "dlq"),
        )  # fmt: skip
        await coord.start()
        seen: list[Bar] = []

        async def pipe() -> None:
            async for bar in source.stream():
                seen.append(bar)  # type: ignore[arg-type]
                await coord.submit(bar)  # type: ignore[arg-type]

        consumer = asyncio.create_task(pipe())
        await pumps_until(gw, lambda: all(sum(b.symbol == s for b in seen) >= 3 for s in symbols))
        before = len(seen)
        await gw.restart(downtime=1.0)  # a simulated minute of bars happens while it is down
        await pumps_until(gw, lambda: source.stats()["reconnects"] == 1)
        await pumps_until(gw, lambda: len(seen) >= before + 30)
        await source.stop()
        await consumer
        await coord.drain()
        health = coord.stats()
        await coord.close()
        rows = await db.pool.fetch(
            "SELECT symbol, ts, open, high, low, close, volume, vwap, trade_count "
            "FROM mdp.bars WHERE resolution = '5s' ORDER BY symbol, ts"
        )
        await db.close()

    stats = source.stats()
    assert stats["disconnects"] == 1 and stats["reconnects"] == 1
    assert stats["backfill_requests"] == len(symbols) and stats["backfilled_bars"] > 0
    assert health.submitted == health.committed == health.new_rows == len(seen)
    assert health.dead_lettered == 0 and health.duplicates_ignored == 0
    for symbol in symbols:
        stored = [tuple(r)[1:] for r in rows if r["symbol"] == symbol]
        expected = gw.bars_between(symbol, stored[0][0], stored[-1][0].timestamp() + 5)
        # every 5-second bar of the period exactly once, with the gateway's values
        assert stored == [
            (b.start, b.open, b.high, b.low, b.close, b.volume, b.wap, b.count) for b in expected
        ]
    assert len(gw.requests_for(REQ_HISTORICAL_DATA, client_id=source.client_id)) == 2


async def test_a_backfill_that_gets_no_answer_is_a_counted_failure(gw: SimulatedGateway) -> None:
    """ib_async answers a timed-out (or refused) history request with an empty list; the
    source must report that as a failed backfill, not as "no bars were missed"."""
    symbols = ["AAPL", "MSFT"]
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, symbols, "bars", backfill_timeout=0.5)
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: all(got.count(s) >= 2 for s in symbols))
        gw.ignored_requests.add(REQ_HISTORICAL_DATA)  # history requests go unanswered
        await gw.restart(downtime=0.5)
        await got.wait_for(gw, lambda: source.stats()["backfill_failures"] == len(symbols))
        count = len(got.records)
        await got.wait_for(gw, lambda: len(got.records) > count)  # live bars keep coming
        await got.finish()
    failed = {s for e in source.errors if "backfill of" in e.message for s in e.symbols}
    assert failed == set(symbols)
    assert source.stats()["backfilled_bars"] == 0


async def test_1101_resubscribes_on_the_same_connection(gw: SimulatedGateway) -> None:
    symbols = ["AAPL", "MSFT"]
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, symbols, "quotes")
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: all(got.count(s) >= 3 for s in symbols))
        gw.connectivity_lost()  # 1100, data paused
        gw.connectivity_restored(data_lost=True)  # 1101: the gateway dropped every subscription
        await got.wait_for(gw, lambda: source.stats()["resubscribes"] == 1)
        requests = gw.requests_for(REQ_MKT_DATA, client_id=source.client_id)
        new_req_ids = {int(r.fields[2]) for r in requests[len(symbols) :]}

        def resumed(symbol: str) -> bool:
            """A quote of ``symbol`` made of a tick sent on a new subscription has arrived."""
            sent = {tick_values(t.tick) for t in gw.sent_ticks
                    if t.req_id in new_req_ids and t.tick.symbol == symbol}  # fmt: skip
            return any(quote_values(q) in sent for q in got.of(symbol))

        await got.wait_for(gw, lambda: all(resumed(s) for s in symbols))
        await got.finish()
    stats = source.stats()
    assert stats["errors_by_code"][1101] == 1 and stats["reconnects"] == 0
    assert len(gw.requests_for(REQ_MKT_DATA, client_id=source.client_id)) == 2 * len(symbols)


async def test_farm_2103_then_2104_resubscribes_bars_and_fills_the_gap(
    gw: SimulatedGateway,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, ["SPY"], "bars")
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("SPY") >= 3)
        gw.broadcast_error(2103)
        gw.broadcast_error(2104)
        await got.wait_for(gw, lambda: source.stats()["resubscribes"] == 1)
        await got.wait_for(gw, lambda: got.count("SPY") >= 10)
        await got.finish()
    bars = got.of("SPY")
    assert len(gw.requests_for(REQ_REAL_TIME_BARS, client_id=source.client_id)) == 2
    assert bars == [b.to_bar(source="ibkr") for b in gw.bars_between(
        "SPY", bars[0].ts, bars[-1].ts.timestamp() + 5)]  # fmt: skip


async def test_watchdog_reports_silence_during_1100(gw: SimulatedGateway) -> None:
    symbols = ["AAPL", "MSFT"]
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, symbols, "quotes", stale_after=0.3, resubscribe_after=600)
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: all(got.count(s) >= 2 for s in symbols))
        gw.connectivity_lost()  # 1100: the socket stays up, the data stops
        await got.wait_for(gw, lambda: source.stale_symbols() == symbols)
        assert source.stats()["stale"] >= len(symbols)  # more if a slow machine paused before
        # reported (in one event, or one per symbol when their last ticks fell in
        # different watchdog intervals)
        reported = {s for e in source.errors if "stale" in e.message for s in e.symbols}
        assert reported == set(symbols)
        gw.connectivity_restored(data_lost=False)  # 1102: the same subscriptions resume
        await got.wait_for(gw, lambda: source.stale_symbols() == [])
        await got.finish()
    assert source.stats()["resubscribes"] == 0 and source.stats()["errors_by_code"][1100] == 1


async def test_watchdog_resubscribes_after_a_longer_silence(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, ["AAPL"], "quotes", stale_after=0.2, resubscribe_after=0.4)
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("AAPL") >= 2)
        gw.pause_data(True)  # silence without any error
        await got.wait_for(gw, lambda: source.stats()["resubscribes"] >= 1)
        gw.pause_data(False)
        count = got.count("AAPL")
        await got.wait_for(gw, lambda: got.count("AAPL") > count)
        await got.finish()
    assert len(gw.requests_for(REQ_MKT_DATA, client_id=source.client_id)) >= 2


async def test_duplicate_client_id_fails_fast_and_clearly(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):  # connect_timeout is 60 s: a hang would show
        ib = new_ib()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=5, timeout=5)
        try:
            source = make_source(gw, ["AAPL"], "quotes",
                                 ibkr_settings=settings_for(gw, 5, connect_timeout=60))  # fmt: skip
            with pytest.raises(DuplicateClientIdError, match=r"client id 5 is already in use"):
                await source.start()
            assert ib.isConnected()
        finally:
            ib.disconnect()
    assert gw.stats()["events"]["duplicate_client_ids"] == 1


async def test_connection_refused_says_what_to_start() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here
    source = IBKRStreamSource(["AAPL"], ibkr_settings=IBKRSettings(port=port))
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ProviderError) as caught:
            await source.start()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "connection refused" in message
    assert f"mdp gateway --port {port}" in message and "--provider synthetic" in message


async def test_reconnect_backoff_follows_the_policy(gw: SimulatedGateway) -> None:
    delays: list[float] = []
    failures_wanted = 3

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == failures_wanted + 1:
            await gw.start_listening()  # the next attempt succeeds
        await asyncio.sleep(0)

    settings = settings_for(gw, reconnect_initial_backoff=0.5, reconnect_max_backoff=1.5)
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, ["AAPL"], "quotes", ibkr_settings=settings,
                             rng=random.Random(7), sleep=sleep)  # fmt: skip
        await source.start()
        await gw.stop_listening()  # drops the session and refuses connections
        await pumps_until(gw, lambda: source.stats()["reconnects"] == 1)
        await source.stop()

    policy = RetryPolicy(
        initial_backoff=0.5, max_backoff=1.5, multiplier=2, jitter="equal", rng=random.Random(7)
    )
    assert delays == [policy.backoff(n) for n in range(1, failures_wanted + 2)]
    caps = [0.5, 1.0, 1.5, 1.5]  # doubling, capped at reconnect_max_backoff
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    stats = source.stats()
    assert stats["connect_failures"] == failures_wanted and stats["connects"] == 2


async def test_stop_during_backoff_does_not_reconnect(gw: SimulatedGateway) -> None:
    in_backoff = asyncio.Event()

    async def sleep(delay: float) -> None:
        in_backoff.set()
        await asyncio.Event().wait()  # a long backoff: only stop() ends it

    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, ["AAPL"], "bars", sleep=sleep)
        await source.start()
        await gw.stop_listening()
        await in_backoff.wait()
        assert source.state == "reconnecting"
        await source.stop()
        await gw.start_listening()
        await gw.wait_pumps(5)
        assert gw.sessions() == []
    starts = [r for r in gw.requests_for(START_API) if r.fields[2] == str(source.client_id)]
    assert len(starts) == 1 and source.stats()["connects"] == 1
    assert source.state == "stopped"
