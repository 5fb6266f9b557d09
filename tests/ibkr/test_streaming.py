"""IBKRStreamSource against the simulated gateway, over TCP with the real ib_async client:
the records are the values the gateway sent."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from ib_async import IB

from mdp_core import IBKRSettings, ProviderRegistry, RuntimeOrchestrator
from mdp_core.gateway import SimulatedGateway, aggregate_bars
from mdp_core.models import Bar, Quote
from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr import IBKRStreamSource
from tests.ibkr.helpers import (
    TIMEOUT,
    Collector,
    always_open,
    make_source,
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
    assert stats["emitted"] == len(records) and stats["rejected"] == 0
    assert stats["channel"].accepted == len(records)


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
        assert source.resolution == "1m"
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("AAPL") >= 3)
        await got.finish()

    minutes = got.of("AAPL")
    assert len(minutes) >= 3
    # the first minute began before the subscription, the last one was cut by stop()
    for bar in minutes[1:-1]:
        start = int(bar.ts.timestamp())
        parts = gw.bars_between("AAPL", start, start + 60)
        whole = aggregate_bars(parts, start, 60).to_bar(source="ibkr")
        assert bar.resolution == "1m"
        assert (bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count) == (
            whole.ts, whole.open, whole.high, whole.low, whole.close, whole.volume,
            whole.trade_count,
        )  # fmt: skip
    assert source.stats()["resample"]["late"] == 0


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


async def test_a_full_channel_rejects_and_counts(gw: SimulatedGateway, logs: list[str]) -> None:
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, SYMBOLS, "quotes", channel_capacity=5)
        await source.start()  # nobody consumes
        await pumps_until(gw, lambda: source.stats()["rejected"] >= 3)
        stats = source.stats()
        await source.stop()
    assert stats["emitted"] == 5 and stats["channel"].depth == 5
    assert stats["channel"].rejected == stats["rejected"]
    assert any("channel full" in m for m in logs)


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
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=77, timeout=5)
        try:
            source = IBKRStreamSource(
                ["SPY"], mode="quotes", provider=ib, market_open=always_open,
                ibkr_settings=IBKRSettings(port=1),  # ignored: the IB is connected
            )  # fmt: skip
            await source.start()
            got = Collector(source)
            await got.wait_for(gw, lambda: got.count("SPY") >= 2)
            await got.finish()
            assert ib.isConnected() and source.client_id == 77
            await ib.reqCurrentTimeAsync()  # the cancel has been handled once this returns
            assert [s.tick_req_ids for s in gw.sessions()] == [()]  # stop() cancelled it
            assert not getattr(ib.client.conn.hasData, "_mdp_split", False)  # handler restored
        finally:
            ib.disconnect()
    assert source.stats()["connects"] == 0


def test_bar_resolution_must_come_from_5s_bars() -> None:
    with pytest.raises(ValueError, match=r"'1s' is not possible.*multiple of 5s"):
        IBKRStreamSource(["AAPL"], mode="bars", bar_resolution="1s")
    with pytest.raises(ValueError, match=r"what_to_show 'VOLUME' is invalid"):
        IBKRStreamSource(["AAPL"], mode="bars", what_to_show="VOLUME")


def test_too_many_symbols_for_one_connection() -> None:
    symbols = [f"S{i:03d}" for i in range(101)]
    with pytest.raises(ValueError, match=r"101 symbols .* limit is 100 .* several streams"):
        IBKRStreamSource(symbols, mode="quotes")
    IBKRStreamSource(symbols[:100], mode="quotes")  # 100 fit
