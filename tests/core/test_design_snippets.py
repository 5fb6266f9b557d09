"""The documented public-API snippets that need neither a database nor IBKR, run as written
(with the provider set to "synthetic" through MDP_PROVIDER where the snippet takes the
default)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from mdp_core import (
    Bar,
    IBKRSettings,
    ProviderRegistry,
    ProviderSource,
    Quote,
    RuntimeOrchestrator,
    deduplicate,
    resample_ohlc,
    throttle,
)
from mdp_core.providers.ibkr import IBKRStreamSource

START = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _synthetic_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_PROVIDER", "synthetic")


async def test_runtime_snippet() -> None:
    async with asyncio.timeout(30):
        rt = RuntimeOrchestrator()  # provider from settings; default "ibkr"
        bars_ch = await rt.bars_to_channel(
            symbols=["AAPL", "MSFT"], resolution="5s", max_buffer=2048
        )
        quotes_ch = await rt.quotes_to_channel(
            symbols=["AAPL"], max_buffer=4096, provider="synthetic"
        )
        bars: list[Bar] = []
        async for bar in bars_ch.iter():
            bars.append(bar)
            if len(bars) == 2:
                break
        quotes: list[Quote] = []
        async for quote in quotes_ch.iter():
            quotes.append(quote)
            if len(quotes) == 3:
                break
        await rt.stop()
        rest = [b async for b in bars_ch.iter()] + [q async for q in quotes_ch.iter()]
    assert {b.symbol for b in bars} == {"AAPL", "MSFT"}
    assert all(isinstance(b, Bar) and b.resolution == "5s" for b in bars)
    assert all(b.end <= datetime.now(UTC) for b in bars)  # live bars are closed windows
    assert [q.symbol for q in quotes] == ["AAPL"] * 3
    assert all(q.bid is not None and q.ask is not None and q.bid < q.ask for q in quotes)
    assert bars_ch.closed and quotes_ch.closed and all(r.symbol in ("AAPL", "MSFT") for r in rest)
    assert {s.provider for s in rt.stats().values()} == {"synthetic"}


async def test_runtime_context_manager_snippet() -> None:
    async with asyncio.timeout(30):
        async with RuntimeOrchestrator() as rt:
            quotes_ch = await rt.quotes_to_channel(symbols=["AAPL"], max_buffer=4096)
            first = await quotes_ch.get()
        assert quotes_ch.closed
    assert first.symbol == "AAPL"


async def test_operator_chain_snippet() -> None:
    async with asyncio.timeout(30), RuntimeOrchestrator() as rt:
        bars_ch = await rt.bars_to_channel(
            symbols=["AAPL", "MSFT"], resolution="5s", max_buffer=2048,
            start=START, rate=None, max_items=2 * 24,  # two minutes of 5 s bars, then the end
        )  # fmt: skip
        seen: list[Bar] = []

        async def tap(stream: AsyncIterator[Bar]) -> AsyncIterator[Bar]:
            async for bar in stream:
                seen.append(bar)
                yield bar

        stream = throttle(tap(bars_ch.iter()), rate_limit=500)
        stream = deduplicate(stream, key_fn=lambda b: (b.symbol, b.ts), ttl=60.0)
        stream = resample_ohlc(stream, get_symbol=lambda b: b.symbol, get_price=lambda b: b.close,
                               get_time=lambda b: b.ts, window=timedelta(minutes=1))  # fmt: skip
        minutes = [bar async for bar in stream]
    assert len(seen) == 48 and len(minutes) == 4
    for bar in minutes:
        closes = [b.close for b in seen if b.symbol == bar.symbol and bar.ts <= b.ts < bar.end]
        assert len(closes) == 12 and bar.resolution == "1m"
        assert (bar.open, bar.high, bar.low, bar.close) == (
            closes[0],
            max(closes),
            min(closes),
            closes[-1],
        )


@dataclass(frozen=True)
class MyDataType:
    """A user's own record type (not one of mdp's models)."""

    symbol: str
    price: float


class MyProvider(ProviderSource[MyDataType]):  # ProviderSource is generic
    """A user's provider: one record per symbol."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def stream(self) -> AsyncIterator[MyDataType]:
        for symbol in self.symbols:
            yield MyDataType(symbol, 10.25)


async def test_registry_snippet() -> None:
    registry = ProviderRegistry()  # built-ins: "ibkr", "synthetic", "replay"
    registry.register("my_provider", lambda **kw: MyProvider(**kw))
    assert {"ibkr", "synthetic", "replay", "my_provider"} <= set(registry.names())

    async with asyncio.timeout(30), RuntimeOrchestrator(registry=registry) as rt:
        ch = await rt.quotes_to_channel(symbols=["AAPL", "MSFT"], provider="my_provider")
        assert [r async for r in ch.iter()] == [
            MyDataType("AAPL", 10.25),
            MyDataType("MSFT", 10.25),
        ]

    with pytest.raises(KeyError) as as_key_error:
        registry.build("nope", symbols=["X"])  # a KeyError and a ValueError
    with pytest.raises(ValueError, match=r"unknown provider 'nope': expected one of .*my_provider"):
        registry.build("nope", symbols=["X"])
    assert str(as_key_error.value) == (
        "unknown provider 'nope': expected one of ibkr, my_provider, replay, synthetic"
    )

    def build_ibkr() -> ProviderSource:
        return registry.build(
            "ibkr",
            symbols=["AAPL"],
            mode="quotes",
            ibkr_settings=IBKRSettings(host="127.0.0.1", port=7497, client_id=1),
        )

    src = build_ibkr()  # building does not connect (nothing listens on 7497); start() would
    assert isinstance(src, IBKRStreamSource) and src.name == "ibkr"
    assert src.symbols == ["AAPL"] and src.mode == "quotes" and src.state == "new"
    assert (src.host, src.port, src.client_id) == ("127.0.0.1", 7497, 1)
    assert src.stats()["connects"] == 0


class MyProviderObject:
    """A provider object in the documented shape: async ``stream_quotes(instruments)``,
    ``stream_bars(instruments, resolution)`` and ``close()``; one thing it yields is not a
    record (bad input: left out, counted, the rest flows)."""

    def __init__(self) -> None:
        self.closed = False
        self.asked: list[tuple[str, ...]] = []

    async def stream_quotes(self, instruments: list[str]) -> AsyncIterator[object]:
        self.asked.append(tuple(instruments))
        for i, symbol in enumerate(instruments):
            yield Quote(symbol, START + timedelta(seconds=i), bid=10.0, ask=10.5, source="mine")
        yield {"symbol": "AAPL", "bid": 10.0}  # not a Quote

    async def stream_bars(self, instruments: list[str], resolution: str) -> AsyncIterator[Bar]:
        self.asked.append((*instruments, resolution))
        for symbol in instruments:
            yield Bar(symbol, START, 10.0, 11.0, 9.5, 10.5, 100.0, resolution, source="mine")

    async def close(self) -> None:
        self.closed = True


async def test_ibkr_source_with_a_provider_object_snippet() -> None:
    my_provider_object = MyProviderObject()
    async with asyncio.timeout(30):
        src = IBKRStreamSource(symbols=["AAPL"], mode="quotes", provider=my_provider_object)
        async with src:
            records = [record async for record in src.stream()]
    assert records == [Quote("AAPL", START, bid=10.0, ask=10.5, source="mine")]
    assert my_provider_object.asked == [("AAPL",)] and my_provider_object.closed
    assert src.edge is not None and src.state == "stopped"
    received, dropped = src.edge.received, dict(src.edge.dropped)
    assert received == 2 and dropped == {"invalid": 1}
    assert received == len(records) + sum(dropped.values())  # the accounting balances
    assert src.stats()["invalid"] == 1
    assert src.graceful_cancel_timeout == 2.0  # the documented default


async def test_ibkr_source_with_a_provider_object_through_the_runtime() -> None:
    my_provider_object = MyProviderObject()
    registry = ProviderRegistry()
    registry.register(
        "mine", lambda **kw: IBKRStreamSource(provider=my_provider_object, **kw), replace=True
    )
    async with asyncio.timeout(30), RuntimeOrchestrator(registry=registry) as rt:
        ch = await rt.bars_to_channel(symbols=["AAPL", "MSFT"], resolution="1m", provider="mine")
        bars = [bar async for bar in ch.iter()]
        (stats,) = rt.stats().values()
    assert [(b.symbol, b.resolution) for b in bars] == [("AAPL", "1m"), ("MSFT", "1m")]
    assert my_provider_object.asked == [("AAPL", "MSFT", "1m")]  # asked at the stream's own
    assert stats.state != "failed"
    assert stats.received == len(bars) + sum(stats.dropped.values()) == 2
