"""The simulated gateway against the real ib_async client over TCP."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from ib_async import IB, Stock, Ticker

from mdp_core.gateway import SimBar, SimulatedGateway
from mdp_core.gateway.codec import encode
from mdp_core.gateway.instruments import con_id_for
from tests.conftest import DATA_DIR
from tests.gateway.helpers import Client, event_future

TIMEOUT = 20  # seconds; every test is bounded with asyncio.timeout

# Startup request -> the end marker that completes it in ib_async.
STARTUP = {61: 62, 5: 53, 99: 102, 6: 54, 76: 74, 7: 55}


async def _qualified(ib: IB, *symbols: str) -> list[Stock]:
    contracts = [Stock(s, "SMART", "USD") for s in symbols]
    result = await ib.qualifyContractsAsync(*contracts)
    assert all(c is not None for c in result)
    return contracts


def _bar_tuple(bar: SimBar) -> tuple[Any, ...]:
    return (bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.wap, bar.count)


def _realtime_tuple(b: Any) -> tuple[Any, ...]:
    """A RealTimeBar as (time, o, h, l, c, volume, wap, count)."""
    return (int(b.time.timestamp()), b.open_, b.high, b.low, b.close, b.volume, b.wap, b.count)


def _history_tuple(b: Any) -> tuple[Any, ...]:
    """A historical BarData as (time, o, h, l, c, volume, wap, count)."""
    t = int(b.date.timestamp())
    return (t, b.open, b.high, b.low, b.close, b.volume, b.average, b.barCount)


def _collect_ticks(
    ticker: Ticker, out: list[tuple[int, float, float]], n: int
) -> asyncio.Future[None]:
    """Record every (tickType, price, size) of ``ticker``; the future is set after ``n`` trades."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_update(t: Ticker) -> None:
        out.extend((td.tickType, td.price, td.size) for td in t.ticks)
        if not done.done() and sum(1 for k, _, _ in out if k in (4, 68)) >= n:
            done.set_result(None)

    ticker.updateEvent += on_update
    return done


async def test_connect_answers_every_startup_request(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = client_factory()
        ib = await client.connect(gw, client_id=7, timeout=5)
        assert ib.isConnected()
        assert ib.client.serverVersion() == 178
        assert ib.managedAccounts() == ["DU1234567"]
        assert [c for c in client.codes() if c in (2104, 2106, 2158)] == [2104, 2106, 2158]
        # every startup request got its end marker (a missing one would cost `timeout` seconds)
        for request, end_marker in STARTUP.items():
            records = gw.requests_for(request, client_id=7)
            assert records, f"startup request {request} was not sent"
            assert all(end_marker in r.replies for r in records), (request, records)
        assert [s.client_id for s in gw.sessions()] == [7]
        assert gw.stats()["events"]["sessions_started"] == 1


async def test_qualify_known_and_unknown_symbols(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = client_factory()
        ib = await client.connect(gw)
        error = client.expect_error(200)
        result = await ib.qualifyContractsAsync(
            Stock("AAPL", "SMART", "USD"), Stock("NOPE", "SMART", "USD")
        )
        assert result[1] is None
        assert result[0].conId == con_id_for("AAPL") == 265598
        assert (result[0].primaryExchange, result[0].exchange) == ("NASDAQ", "SMART")
        assert (await error)[1] == 200
        spy = (await ib.qualifyContractsAsync(Stock("SPY", "SMART", "USD")))[0]
        assert spy.conId == con_id_for("SPY") and spy.primaryExchange == "ARCA"


async def test_market_data_ticks_are_the_ticks_sent(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw, client_id=3)
        (aapl,) = await _qualified(ib, "AAPL")
        ticker = ib.reqMktData(aapl)
        received: list[tuple[int, float, float]] = []
        await _collect_ticks(ticker, received, n=30)
        assert ticker.marketDataType == 1 and ticker.minTick == 0.01

        sent = [s for s in gw.sent_ticks if s.client_id == 3]
        assert all(not s.delayed for s in sent)
        n = len([k for k, _, _ in received if k == 4])
        # the client saw exactly the trades and quotes the gateway wrote, in order
        assert [(p, sz) for k, p, sz in received if k == 4] == [
            (s.tick.last, s.tick.last_size) for s in sent[:n]
        ]
        # bid and ask arrive as changes, like TWS sends them: a tickPrice (1/2, with its
        # size) when the price moved, a tickSize (0/3) when only the size did, else nothing
        for side, (price_type, size_type) in {"bid": (1, 0), "ask": (2, 3)}.items():
            expected, before = [], None
            for s in sent[:n]:
                value = (getattr(s.tick, side), getattr(s.tick, f"{side}_size"))
                if before is None or value[0] != before[0]:
                    expected.append((price_type, *value))
                elif value[1] != before[1]:
                    expected.append((size_type, *value))
                before = value
            got = [t for t in received if t[0] in (price_type, size_type)]
            assert got[: len(expected)] == expected, side
        assert all(s.tick.bid < s.tick.ask for s in sent)
        # and those are the model's ticks (after the first, which is the state at subscribe)
        first, last = sent[1].tick.time, sent[n - 1].tick.time
        assert [s.tick for s in sent[1:n]] == gw.ticks_between("AAPL", first, last + 0.001)
        last_ts = ticker.lastTimestamp
        assert last_ts is not None and last_ts.timestamp() in {int(s.tick.time) for s in sent}
        assert gw.stats()["symbols"]["AAPL"]["ticks"] >= n


async def test_ticks_of_all_subscriptions_go_out_in_time_order(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw, client_id=4)
        symbols = ["AAPL", "MSFT", "SPY"]
        tickers = [ib.reqMktData(c) for c in await _qualified(ib, *symbols)]
        subscribed = len(gw.sent_ticks)  # the subscriptions' first ticks (state at subscribe)
        while len(gw.sent_ticks) < subscribed + 60:
            await gw.wait_pumps(1)
        gw.pause_data(True)
        await ib.reqCurrentTimeAsync()  # answered after everything written before it

    sent = [s for s in gw.sent_ticks if s.client_id == 4]
    streamed = sent[len(symbols) :]
    # events as they happen: one time-ordered stream across symbols, not symbol by symbol
    times = [s.tick.time for s in streamed]
    assert times == sorted(times)
    assert len({s.tick.symbol for s in streamed[:10]}) > 1
    for symbol in symbols:
        mine = [s.tick for s in streamed if s.tick.symbol == symbol]
        assert mine == gw.ticks_between(symbol, mine[0].time, mine[-1].time + 0.001)
    # quotes are sent as changes, yet every ticker ends in the state of its last tick
    for symbol, ticker in zip(symbols, tickers, strict=True):
        last = next(s.tick for s in reversed(sent) if s.tick.symbol == symbol)
        assert (ticker.bid, ticker.bidSize, ticker.ask, ticker.askSize) == (
            last.bid, last.bid_size, last.ask, last.ask_size,
        )  # fmt: skip
        assert (ticker.last, ticker.lastSize) == (last.last, last.last_size)
        # each trade is 4 to 6 messages: bid and ask if they changed, last price and size,
        # volume, last trade time
        counts = gw.stats()["symbols"][symbol]
        assert 4 * counts["ticks"] <= counts["tick_messages"] <= 6 * counts["ticks"]


async def test_rt_volume_generic_tick_233(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw, client_id=5)
        (spy,) = await _qualified(ib, "SPY")
        ticker = ib.reqMktData(spy, "233")
        received: list[tuple[int, float, float]] = []
        await _collect_ticks(ticker, received, n=5)
        gw.pause_data(True)
        await ib.reqCurrentTimeAsync()  # answered after everything written before it

    sent = [s.tick for s in gw.sent_ticks if s.client_id == 5]
    # one RTVolume per trade, with its price and size, the cumulative volume and vwap
    assert [(p, sz) for k, p, sz in received if k == 48] == [(t.last, t.last_size) for t in sent]
    volume = sum(t.last_size for t in sent)
    assert ticker.rtVolume == ticker.volume == volume
    assert ticker.vwap == round(sum(t.last * t.last_size for t in sent) / volume, 4)
    assert ticker.rtTime == datetime.fromtimestamp(round(sent[-1].time * 1000) / 1000, UTC)


async def test_delayed_market_data(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = client_factory()
        ib = await client.connect(gw)
        (msft,) = await _qualified(ib, "MSFT")
        warning = client.expect_error(10167)
        ib.reqMarketDataType(3)
        ticker = ib.reqMktData(msft)
        received: list[tuple[int, float, float]] = []
        await _collect_ticks(ticker, received, n=3)
        assert (await warning)[1] == 10167
        assert ticker.marketDataType == 3
        kinds = {k for k, _, _ in received}
        assert {66, 67, 68} <= kinds and not kinds & {1, 2, 4}
        assert not math.isnan(ticker.last) and ticker.bid > 0 and ticker.ask > 0


async def test_not_live_instrument_streams_delayed_ticks(
    client_factory: Callable[[], Client],
) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        SimulatedGateway(
            symbols=["AAPL"], delayed_symbols=["AAPL"], port=0, time_compression=60.0,
            tick_interval=0.02,
        ) as gw,
    ):  # fmt: skip
        ib = await client_factory().connect(gw)
        (aapl,) = await _qualified(ib, "AAPL")
        ticker = ib.reqMktData(aapl)  # market data type stays 1 (live)
        received: list[tuple[int, float, float]] = []
        await _collect_ticks(ticker, received, n=2)
        assert ticker.marketDataType == 3
        assert {k for k, _, _ in received} <= {66, 67, 68, 69, 70, 71, 74}


async def test_snapshot_ends_with_tick_snapshot_end(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw)
        (spy,) = await _qualified(ib, "SPY")
        (ticker,) = await ib.reqTickersAsync(spy)  # snapshot request, completed by msg 57
        assert ticker.bid > 0 and ticker.ask > ticker.bid and ticker.last > 0
        assert 57 in gw.requests_for(1)[-1].replies
        assert gw.sessions()[0].tick_req_ids == ()  # a snapshot holds no line


async def test_real_time_bars_are_the_models_bars(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw)
        (aapl,) = await _qualified(ib, "AAPL")
        bars = ib.reqRealTimeBars(aapl, 5, "TRADES", False)
        got: list[tuple[Any, ...]] = []
        enough = event_future(bars.updateEvent, lambda b, new: len(b) >= 6)
        bars.updateEvent += lambda b, new: got.append(_realtime_tuple(b[-1]))
        await enough
        assert all(t % 5 == 0 for t, *_ in got)
        expected = gw.bars_between("AAPL", got[0][0], got[-1][0] + 5)
        assert got == [_bar_tuple(b) for b in expected]  # consecutive, none missing
        ib.cancelRealTimeBars(bars)
        await ib.reqCurrentTimeAsync()  # the cancel has been handled once this returns
        assert gw.sessions()[0].bar_req_ids == ()


async def test_real_time_bars_reject_other_sizes(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = client_factory()
        ib = await client.connect(gw)
        (aapl,) = await _qualified(ib, "AAPL")
        error = client.expect_error(420)
        ib.reqRealTimeBars(aapl, 10, "TRADES", False)
        assert "only 5 seconds" in (await error)[2]


async def test_historical_5s_bars_equal_the_model(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw)
        (aapl,) = await _qualified(ib, "AAPL")
        end = int(gw.now()) // 60 * 60 - 600  # a period in the past, on a minute
        bars = await ib.reqHistoricalDataAsync(
            aapl, datetime.fromtimestamp(end, UTC), "1800 S", "5 secs", "TRADES", False,
            formatDate=2,
        )  # fmt: skip
        expected = gw.bars_between("AAPL", end - 1800, end)
        assert len(expected) == 360
        assert [_history_tuple(b) for b in bars] == [_bar_tuple(b) for b in expected]

        minutes = await ib.reqHistoricalDataAsync(
            aapl, datetime.fromtimestamp(end, UTC), "600 S", "1 min", "TRADES", False,
            formatDate=1,
        )  # fmt: skip
        assert len(minutes) == 10
        for m in minutes:
            start = int(m.date.timestamp())
            parts = gw.bars_between("AAPL", start, start + 60)
            assert len(parts) == 12
            assert (m.open, m.high, m.low, m.close, m.volume, m.barCount) == (
                parts[0].open, max(p.high for p in parts), min(p.low for p in parts),
                parts[-1].close, sum(p.volume for p in parts), sum(p.count for p in parts),
            )  # fmt: skip


async def test_historical_keep_up_to_date(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw)
        (msft,) = await _qualified(ib, "MSFT")
        bars = await ib.reqHistoricalDataAsync(
            msft, "", "60 S", "5 secs", "TRADES", False, formatDate=2, keepUpToDate=True
        )
        assert bars
        initial = list(bars)
        # wait for two new bars: the first of them is then final
        await event_future(bars.updateEvent, lambda b, new: new and len(b) >= len(initial) + 2)
        initial_last = initial[-1].date
        finished = bars[len(initial)]
        assert finished.date.timestamp() == initial_last.timestamp() + 5
        (model,) = gw.bars_between("MSFT", finished.date, finished.date.timestamp() + 5)
        assert (finished.open, finished.high, finished.low, finished.close, finished.volume) == (
            model.open, model.high, model.low, model.close, model.volume,
        )  # fmt: skip
        assert gw.stats()["symbols"]["MSFT"]["history_updates"] >= 2


async def test_drop_all_disconnects_clients(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw)
        (aapl,) = await _qualified(ib, "AAPL")
        ticker = ib.reqMktData(aapl)
        await event_future(ticker.updateEvent)
        disconnected = event_future(ib.disconnectedEvent)
        assert gw.drop_all() == 1
        await disconnected
        assert not ib.isConnected()
        # the gateway still listens: a new connection works
        await ib.connectAsync("127.0.0.1", gw.port, clientId=50, timeout=5)
        assert ib.isConnected()


async def test_a_gateway_down_refuses_connections_and_a_restart_accepts_them_again(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw, client_id=60)
        disconnected = event_future(ib.disconnectedEvent)
        await gw.stop_listening()  # down: sessions dropped, connections refused
        await disconnected
        assert not gw.listening
        with pytest.raises(ConnectionRefusedError):
            await client_factory().connect(gw, timeout=2)
        await gw.start_listening()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=60, timeout=5)
        assert ib.isConnected()

        disconnected = event_future(ib.disconnectedEvent)
        await gw.restart(downtime=0.1)  # drops the sessions, then listens again
        await disconnected
        assert gw.listening
        await ib.connectAsync("127.0.0.1", gw.port, clientId=60, timeout=5)
        assert ib.isConnected()
        assert gw.stats()["events"]["restarts"] == 1


async def test_connectivity_errors_and_paused_data(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = client_factory()
        ib = await client.connect(gw)
        (aapl,) = await _qualified(ib, "AAPL")
        ticker = ib.reqMktData(aapl)
        await event_future(ticker.updateEvent)

        lost = client.expect_error(1100)
        gw.connectivity_lost()
        await lost  # every tick written before the pause has arrived by now
        updates: list[Ticker] = []
        ticker.updateEvent += updates.append
        paused_from = gw.now()
        while not gw.ticks_between("AAPL", paused_from, gw.now()):  # data to withhold
            await gw.wait_pumps(1)
        await gw.wait_pumps(1)  # ... and a pump that would have sent it
        await ib.reqCurrentTimeAsync()  # anything written meanwhile would have arrived first
        assert updates == []

        kept = client.expect_error(1102)
        summary = event_future(ib.accountSummaryEvent)  # ib_async asks for it on 1102
        gw.connectivity_restored(data_lost=False)
        await kept
        await summary
        await event_future(ticker.updateEvent)  # data flows again on the same subscription

        lost_data = client.expect_error(1101)
        gw.connectivity_restored(data_lost=True)
        await lost_data
        assert gw.sessions()[0].tick_req_ids == ()  # the client must resubscribe after 1101
        assert {1100, 1101, 1102} <= set(client.codes())


async def test_farm_notices_and_pacing_errors_are_broadcast(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = client_factory()
        await client.connect(gw)
        broken, pacing = client.expect_error(2103), client.expect_error(100)
        assert gw.broadcast_error(2103) == 1
        assert gw.pacing_violation() == 1
        assert (await broken)[2] == "Market data farm connection is broken:usfarm"
        assert (await pacing)[0] == -1


async def test_duplicate_client_id_is_refused(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        first = client_factory()
        ib1 = await first.connect(gw, client_id=5)
        second = client_factory()
        refused = second.expect_error(326)
        with pytest.raises(TimeoutError):
            await second.connect(gw, client_id=5, timeout=0.5)
        assert (await refused)[1] == 326
        assert ib1.isConnected() and [s.client_id for s in gw.sessions()] == [5]
        assert gw.stats()["events"]["duplicate_client_ids"] == 1


async def test_error_101_past_max_lines(client_factory: Callable[[], Client]) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        SimulatedGateway(symbols=["AAPL", "MSFT", "SPY"], port=0, max_lines=2) as gw,
    ):
        client = client_factory()
        ib = await client.connect(gw)
        aapl, msft, spy = await _qualified(ib, "AAPL", "MSFT", "SPY")
        ib.reqMktData(aapl)
        ib.reqRealTimeBars(msft, 5, "TRADES", False)  # bars take a line too
        too_many = client.expect_error(101)
        ib.reqMktData(spy)
        req_id, _, msg = await too_many
        assert msg == "Max number of tickers has been reached."
        assert req_id == int(gw.requests_for(1)[-1].fields[2])  # the refused reqMktData
        assert len(gw.sessions()[0].tick_req_ids) == 1


async def test_replay_bars_aggregate_to_the_file_minutes(
    client_factory: Callable[[], Client],
) -> None:
    path = DATA_DIR / "SPY_1min_2011-01.csv"
    rows = pd.read_csv(path, sep=";", header=None, names=["t", "o", "h", "l", "c", "v"])
    # end-stamped in this file: the minute starts 60 s before its stamp
    rows["start"] = pd.to_datetime(rows["t"], format="%Y%m%d %H%M%S", utc=True).map(
        lambda ts: int(ts.timestamp()) - 60
    )
    start = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    async with (
        asyncio.timeout(TIMEOUT),
        SimulatedGateway(
            symbols=(), replay=[path], port=0, start=start, time_compression=3000.0,
            tick_interval=0.02,
        ) as gw,
    ):  # fmt: skip
        first = int(rows["start"].iloc[0])
        # the file starts at the simulated start: file minute f shows at start + (f - first)
        for row in rows.head(300).itertuples():
            sim_minute = int(start.timestamp()) + row.start - first
            parts = gw.bars_between("SPY", sim_minute, sim_minute + 60)
            assert len(parts) == 12 and all(p.time % 5 == 0 for p in parts)
            assert (
                parts[0].open, max(p.high for p in parts), min(p.low for p in parts),
                parts[-1].close, sum(p.volume for p in parts),
            ) == (row.o, row.h, row.l, row.c, row.v)  # fmt: skip
        # minutes missing from the file have no bars
        gap = int(start.timestamp()) + 120  # the file has no 09:02 minute
        assert first + 120 not in set(rows["start"])
        assert gw.bars_between("SPY", gap, gap + 60) == []

        # and through the wire: one-minute history of the replayed period is the file's
        ib = await client_factory().connect(gw)
        (spy,) = await _qualified(ib, "SPY")
        while gw.now() < start.timestamp() + 600:  # let ten simulated minutes pass
            await gw.wait_pumps(1)
        end = int(gw.now()) // 60 * 60
        minutes = await ib.reqHistoricalDataAsync(
            spy, datetime.fromtimestamp(end, UTC), f"{end - int(start.timestamp())} S",
            "1 min", "TRADES", False, formatDate=2,
        )  # fmt: skip
        by_start = {int(r.start): r for r in rows.itertuples()}
        assert minutes
        for m in minutes:
            row = by_start[first + int(m.date.timestamp()) - int(start.timestamp())]
            assert (m.open, m.high, m.low, m.close, m.volume) == (row.o, row.h, row.l, row.c, row.v)


async def test_malformed_and_oversized_frames_close_only_that_session(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw)
        (aapl,) = await _qualified(ib, "AAPL")
        ticker = ib.reqMktData(aapl)
        await event_future(ticker.updateEvent)

        async def raw_session(client_id: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"API\0" + struct.pack(">I", 9) + b"v157..178")
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            assert (await reader.readexactly(size)).split(b"\0")[0] == b"178"
            writer.write(encode(71, 2, client_id, ""))
            return reader, writer

        async def read_until_eof(reader: asyncio.StreamReader) -> None:
            while await reader.read(65536):
                pass

        # an unknown msg id is ignored and the session keeps answering
        reader, writer = await raw_session(90)
        writer.write(encode(999, 1, "x") + encode(49, 1))
        seen = []
        while 49 not in seen:
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            seen.append(int((await reader.readexactly(size)).split(b"\0")[0]))
        # an oversized length prefix closes that session
        writer.write(struct.pack(">I", 17 * 1024 * 1024))
        await read_until_eof(reader)
        writer.close()

        # a message id that is not a number closes that session too
        reader, writer = await raw_session(91)
        writer.write(struct.pack(">I", 4) + b"abc\0")
        await read_until_eof(reader)
        writer.close()

        assert gw.stats()["events"]["malformed_sessions"] == 2
        assert ib.isConnected()
        await event_future(ticker.updateEvent)  # the ib_async session keeps streaming


async def test_handshake_refusals(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        bad_prefix = b"XYZ\0" + struct.pack(">I", 9) + b"v157..178"
        too_new = b"API\0" + struct.pack(">I", 9) + b"v179..190"
        for greeting in (bad_prefix, too_new):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(greeting)
            assert await reader.read() == b""  # closed without a reply
            writer.close()
        assert gw.stats()["events"]["handshake_failures"] == 2


async def test_control_commands(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert "restart SECONDS" in await gw.control("help")
        assert await gw.control("pause") == "data paused" and gw.data_paused
        assert await gw.control("resume") == "data resumed" and not gw.data_paused
        assert "listening=True" in await gw.control("status")
        with pytest.raises(ValueError, match="unknown command 'explode'"):
            await gw.control("explode")
        with pytest.raises(ValueError, match="invalid arguments"):
            await gw.control("error notanumber")


async def test_backfill_after_a_drop_covers_the_gap_exactly_once(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw, client_id=70)
        seen: dict[int, tuple[Any, ...]] = {}
        duplicates: list[int] = []

        def record(row: tuple[Any, ...]) -> None:
            if row[0] in seen:
                duplicates.append(row[0])
            seen[row[0]] = row

        async def stream(n: int) -> list[int]:
            (aapl,) = await _qualified(ib, "AAPL")
            bars = ib.reqRealTimeBars(aapl, 5, "TRADES", False)
            bars.updateEvent += lambda bars, new: record(_realtime_tuple(bars[-1]))
            await event_future(bars.updateEvent, lambda b, new: len(b) >= n)
            return [int(b.time.timestamp()) for b in bars]

        before = await stream(3)
        disconnected = event_future(ib.disconnectedEvent)
        gw.drop_all()
        await disconnected
        await gw.wait_pumps(10)  # bars keep happening while the client is away
        await ib.connectAsync("127.0.0.1", gw.port, clientId=70, timeout=5)
        after = await stream(2)

        gap_start, gap_end = max(before) + 5, min(after)
        assert gap_end > gap_start  # there is something to backfill
        (aapl,) = await _qualified(ib, "AAPL")
        history = await ib.reqHistoricalDataAsync(
            aapl, datetime.fromtimestamp(gap_end, UTC), f"{gap_end - gap_start} S", "5 secs",
            "TRADES", False, formatDate=2,
        )  # fmt: skip
        for b in history:
            record(_history_tuple(b))
        assert duplicates == []
        expected = gw.bars_between("AAPL", min(before), max(seen) + 5)
        assert [seen[t] for t in sorted(seen)] == [_bar_tuple(b) for b in expected]


async def test_stall_holds_requests_until_unstalled(
    gw: SimulatedGateway, client_factory: Callable[[], Client]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = await client_factory().connect(gw)
        gw.stall(True)
        pending = asyncio.ensure_future(ib.reqCurrentTimeAsync())
        await gw.wait_pumps(3)
        assert not pending.done() and gw.requests_for(49) == []
        gw.stall(False)
        answer = await pending
        assert answer.tzinfo is not None
        assert gw.requests_for(49)[0].replies == [49]


async def test_pacing_limit_sends_error_100(client_factory: Callable[[], Client]) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        SimulatedGateway(symbols=["AAPL"], port=0, pacing_limit=20) as gw,
    ):
        client = client_factory()
        ib = await client.connect(gw)
        pacing = client.expect_error(100)
        for _ in range(30):  # ib_async itself lets 45 requests/s through
            ib.client.reqCurrentTime()
        assert (await pacing)[0] == -1
        assert ib.isConnected()
