"""IBKRStreamSource against the simulated gateway, over TCP with the real ib_async client:
the records are the values the gateway sent."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from mdp_core import IBKRSettings, ProviderRegistry, RuntimeOrchestrator
from mdp_core.gateway import SimulatedGateway, aggregate_bars
from mdp_core.models import Bar, Quote
from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr import IBAsyncProvider, IBKROptions, IBKRStreamSource
from mdp_core.providers.ibkr.flow import _SPLIT
from tests.ibkr.helpers import (
    TIMEOUT,
    Collector,
    always_open,
    make_source,
    new_ib,
    pumps_until,
    quote_values,
    settings_for,
    sim_bars,
    tick_values,
)

SYMBOLS = ["AAPL", "MSFT", "SPY"]


async def test_quotes_are_the_ticks_the_gateway_sent(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, SYMBOLS, "quotes")
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: all(got.count(s) >= 20 for s in SYMBOLS))
        first = got.records[0]
        frozen = dataclasses.replace(first)
        await got.wait_for(gw, lambda: len(got.records) >= 80)
        records = await got.finish()

    assert all(isinstance(r, Quote) and r.source == "ibkr" for r in records)
    assert isinstance(first, Quote)
    assert first == frozen  # an immutable copy: later updates did not touch it
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.bid = 1.0  # type: ignore[misc]
    client_id = source.client_id
    for symbol in SYMBOLS:
        quotes = got.of(symbol)
        sent = [
            tick_values(s.tick) for s in gw.sent_ticks
            if s.client_id == client_id and s.tick.symbol == symbol
        ]  # fmt: skip
        # One quote per ticker update: each is the state after some tick the gateway sent,
        # in the order sent (a read holding several ticks of a symbol yields its last one).
        position = 0
        for quote in quotes:
            values = quote_values(quote)
            while position < len(sent) and sent[position] != values:
                position += 1
            assert position < len(sent), f"{symbol}: {values} was never sent (in this order)"
            position += 1
        assert all(q.bid is not None and q.ask is not None and q.bid < q.ask for q in quotes)
        times = [q.ts for q in quotes]
        assert times == sorted(times) and len(set(times)) == len(times)  # unique keys
    stats = source.stats()
    assert source.edge is not None
    channel = source.edge.channel.stats()
    # counted in the callback: every quote received was delivered, or replaced by a newer
    # quote of its symbol while the consumer was behind (conflated, counted)
    assert stats["received"] == len(records) + channel.conflated
    assert channel.accepted == stats["received"] and channel.dropped == 0


async def test_bars_are_the_gateway_bars_every_one(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, SYMBOLS, "bars")
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: all(got.count(s) >= 5 for s in SYMBOLS))
        await got.finish()

    for symbol in SYMBOLS:
        bars = got.of(symbol)
        assert all(isinstance(b, Bar) and b.resolution == "5s" for b in bars)
        assert bars == sim_bars(gw, symbol, bars)  # consecutive, none missing, same values
    assert source.stats()["duplicates_dropped"] == 0


async def test_coarser_bars_are_resampled_from_5s_bars(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, ["AAPL"], "bars", bar_resolution="1m")
        assert source.resolution == "5s"  # native: the stream's edge rolls them up
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("AAPL") >= 3)
        await got.finish()

    minutes = got.of("AAPL")
    assert len(minutes) >= 3
    # the first minute began before the subscription: its start came from history; the
    # last one was cut by stop()
    for bar in minutes[:-1]:
        start = int(bar.ts.timestamp())
        parts = gw.bars_between("AAPL", start, start + 60)
        whole = aggregate_bars(parts, start, 60).to_bar(source="ibkr")
        assert bar.resolution == "1m"
        assert (bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count) == (
            whole.ts, whole.open, whole.high, whole.low, whole.close, whole.volume,
            whole.trade_count,
        )  # fmt: skip
        assert not bar.partial
    assert minutes[-1].partial  # cut short by stop(): marked, so the store can replace it
    assert source.edge is not None and source.edge.dropped.get("late", 0) == 0
    assert source.stats()["received"] == source.edge.dropped["resampled"] + len(minutes)


async def test_unknown_symbols_one_error_the_rest_stream(
    gw: SimulatedGateway, logs: list[str]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, ["AAPL", "NOPE", "MSFT", "ZZZZ"], "quotes")
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("AAPL") >= 3 and got.count("MSFT") >= 3)
        await got.finish()

    assert source.unknown_symbols == ["NOPE", "ZZZZ"]
    assert {r.symbol for r in got.records} == {"AAPL", "MSFT"}
    unknown = [m for m in logs if "unknown symbol" in m]
    assert len(unknown) == 1 and "NOPE, ZZZZ" in unknown[0] and "AAPL, MSFT" in unknown[0]
    issues = [e for e in source.errors if e.code == 200]
    assert len(issues) == 1 and issues[0].symbols == ("NOPE", "ZZZZ")
    assert source.stats()["unknown_symbols"] == ["NOPE", "ZZZZ"]


async def test_no_known_symbol_is_a_provider_error(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, ["NOPE", "ZZZZ"], "bars")
        with pytest.raises(ProviderError, match=r"none of the symbols NOPE, ZZZZ is known"):
            await source.start()
        await pumps_until(gw, lambda: gw.sessions() == [])  # it disconnected on the way out
        assert source.state == "failed"


async def test_a_slow_consumer_pauses_the_socket_and_loses_no_bar(
    gw: SimulatedGateway, logs: list[str]
) -> None:
    """Bars under ``block``: when the channel is full the source stops reading its socket
    (TCP holds the gateway back) instead of dropping; once the consumer catches up every
    bar the gateway sent is there, once."""
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, SYMBOLS, "bars", channel_capacity=3)
        await source.start()  # nobody consumes yet
        await pumps_until(gw, lambda: source.stats()["paused"])
        assert source.edge is not None and len(source.edge.channel) >= 3
        paused_for = gw.now()
        got = Collector(source)  # the consumer arrives: reading resumes
        await got.wait_for(
            gw, lambda: all(got.count(s) and got.of(s)[-1].ts.timestamp() > paused_for + 30
                            for s in SYMBOLS)
        )  # fmt: skip
        await got.finish()
    stats = source.stats()
    assert stats["pauses"] >= 1 and any("reading paused" in m for m in logs)
    for symbol in SYMBOLS:
        bars = got.of(symbol)
        assert bars == sim_bars(gw, symbol, bars)  # consecutive, none missing, same values
    assert stats["received"] == len(got.records)  # nothing dropped, nothing pending
    assert source.edge.dropped == {}


async def test_quotes_conflate_per_symbol_when_the_consumer_is_behind(
    gw: SimulatedGateway,
) -> None:
    """Quotes (default policy ``conflate``): a consumer that falls behind gets the latest
    quote of each symbol, counted; the last state the gateway sent is never lost."""
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, SYMBOLS, "quotes", channel_capacity=4)
        await source.start()  # nobody consumes: the channel fills, then conflates
        assert source.edge is not None
        await pumps_until(gw, lambda: source.edge.channel.stats().conflated >= 50)  # type: ignore[union-attr]
        gw.pause_data()  # no more ticks from here on
        client = next(s.client_id for s in gw.sessions())
        await source.ib.reqCurrentTimeAsync()  # everything sent before this was read
        records = source.edge.channel.drain_nowait()
        await source.stop()
    channel = source.edge.channel.stats()
    assert not source.stats()["paused"] and channel.dropped == 0
    assert source.stats()["received"] == channel.delivered + channel.conflated
    for symbol in SYMBOLS:
        sent = [tick_values(s.tick) for s in gw.sent_ticks
                if s.client_id == client and s.tick.symbol == symbol]  # fmt: skip
        mine = [quote_values(r) for r in records if r.symbol == symbol]
        assert mine and mine[-1] == sent[-1]  # the latest wins


async def test_registry_builds_it_and_runtime_streams_it(gw: SimulatedGateway) -> None:
    settings = settings_for(gw)
    registry = ProviderRegistry()
    built = registry.build("ibkr", symbols=["AAPL"], mode="quotes", ibkr_settings=settings)
    assert isinstance(built, IBKRStreamSource) and built.state == "new"
    assert built.stats()["connects"] == 0  # building does not connect
    assert gw.sessions() == []

    async with asyncio.timeout(TIMEOUT), RuntimeOrchestrator(registry=registry) as rt:
        channel = await rt.bars_to_channel(
            ["AAPL", "MSFT"], resolution="5s", provider="ibkr", ibkr_settings=settings,
            market_open=always_open,
        )  # fmt: skip
        bars = [await channel.get() for _ in range(4)]
        (stream,) = rt.stats().values()
    assert stream.provider == "ibkr" and stream.native_resolution is None
    assert {b.symbol for b in bars} == {"AAPL", "MSFT"}


async def test_a_connected_ib_is_used_and_left_connected(gw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = new_ib()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=77, timeout=5)
        try:
            source = IBKRStreamSource(
                ["SPY"], mode="quotes", provider=ib, options=IBKROptions(market_open=always_open),
                ibkr_settings=IBKRSettings(port=1),  # ignored: the IB is connected
            )  # fmt: skip
            await source.start()
            got = Collector(source)
            await got.wait_for(gw, lambda: got.count("SPY") >= 2)
            await got.finish()
            assert ib.isConnected() and source.client_id == 77
            await ib.reqCurrentTimeAsync()  # the cancel has been handled once this returns
            assert [s.tick_req_ids for s in gw.sessions()] == [()]  # stop() cancelled it
            assert id(ib.client.conn.hasData) not in _SPLIT  # the read splitter was removed
        finally:
            ib.disconnect()
    assert source.stats()["connects"] == 0


def test_bar_resolution_must_come_from_5s_bars() -> None:
    with pytest.raises(ValueError, match=r"'1s' is not possible.*multiple of 5s"):
        IBKRStreamSource(["AAPL"], mode="bars", bar_resolution="1s")
    with pytest.raises(ValueError, match=r"what_to_show 'VOLUME' is invalid"):
        IBKRStreamSource(["AAPL"], mode="bars", options=IBKROptions(what_to_show="VOLUME"))


def test_too_many_symbols_for_one_connection() -> None:
    symbols = [f"S{i:03d}" for i in range(101)]
    with pytest.raises(ValueError, match=r"101 symbols .* limit is 100 .* several streams"):
        IBKRStreamSource(symbols, mode="quotes")
    IBKRStreamSource(symbols[:100], mode="quotes")  # 100 fit


async def test_the_default_provider_streams_on_its_own(gw: SimulatedGateway) -> None:
    """``IBAsyncProvider`` in the provider-object shape: ``stream_quotes`` and
    ``stream_bars`` yield the gateway's data; leaving the iteration or ``close()`` stops
    the client and leaves no session behind."""
    provider = IBAsyncProvider(settings_for(gw), IBKROptions(market_open=always_open))
    async with asyncio.timeout(TIMEOUT):
        quotes: list[Quote] = []
        async for quote in provider.stream_quotes(["AAPL", "msft"]):
            quotes.append(quote)
            if len(quotes) == 10:
                break
        bars = provider.stream_bars(["SPY"], "5s")
        first_bar = await anext(bars)
        await provider.close()  # the open bar stream ends after what it received
        rest = [bar async for bar in bars]
        await pumps_until(gw, lambda: gw.sessions() == [])
    assert {q.symbol for q in quotes} <= {"AAPL", "MSFT"} and len(quotes) == 10
    assert all(isinstance(q, Quote) and q.source == "ibkr" for q in quotes)
    assert isinstance(first_bar, Bar) and first_bar.symbol == "SPY"
    assert all(b.symbol == "SPY" and b.ts > first_bar.ts for b in rest)


async def test_a_default_provider_object_takes_the_push_path(gw: SimulatedGateway) -> None:
    provider = IBAsyncProvider(settings_for(gw), IBKROptions(market_open=always_open))
    async with asyncio.timeout(TIMEOUT):
        source = IBKRStreamSource(["AAPL"], mode="quotes", provider=provider)
        await source.start()
        assert source.ib is not None and source.ib.isConnected()  # its own ib_async client
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("AAPL") >= 3)
        records = await got.finish()
    stats = source.stats()
    assert stats["connects"] == 1 and stats["received"] == len(records)


def test_a_provider_it_cannot_use_is_named() -> None:
    with pytest.raises(ValueError, match=r"provider 'ib': expected None, an ib_async IB"):
        IBKRStreamSource(["AAPL"], provider="ib")
    with pytest.raises(ValueError, match=r"brings its own settings and options"):
        IBKRStreamSource(["AAPL"], provider=IBAsyncProvider(), options=IBKROptions())
