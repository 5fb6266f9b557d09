"""RuntimeOrchestrator: provider -> channel pumping, resampling, errors reaching the consumer,
and stop() bounded even when a provider ignores it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mdp_core.channel import Channel
from mdp_core.models import Bar, Quote, Record
from mdp_core.providers.base import ProviderError, ProviderSource
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.providers.synthetic import SyntheticSource
from mdp_core.runtime import RuntimeOrchestrator

SPY = Path(__file__).resolve().parents[2] / "data" / "SPY_1min_2011-01.csv"
START = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


async def drain(channel: Channel[Any], limit: int | None = None) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(30):
        async for item in channel.iter():
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    return out


class ScriptedSource(ProviderSource):
    """Yields ``count`` quotes, then fails with ``error`` (if any) or hangs (if ``hang``),
    optionally ignoring stop(): what a misbehaving real provider does."""

    def __init__(
        self,
        symbols: list[str],
        mode: str = "quotes",
        bar_resolution: str = "5s",
        *,
        count: int = 3,
        error: Exception | None = None,
        hang: bool = False,
        start_error: Exception | None = None,
    ) -> None:
        super().__init__(symbols, mode, bar_resolution)
        self.count, self.error, self.hang, self.start_error = count, error, hang, start_error
        self.stopped = asyncio.Event()
        self.stop_calls = 0

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    async def stop(self) -> None:
        self.stop_calls += 1
        if not self.hang:
            self.stopped.set()

    async def stream(self) -> AsyncIterator[Record]:
        for i in range(self.count):
            yield Quote(self.symbols[0], START.replace(second=i), bid=1.0, ask=2.0)
        if self.error is not None:
            raise self.error
        if self.hang:
            await asyncio.Event().wait()  # ignores stop(); only cancellation ends it
        await self.stopped.wait()


def runtime_with(**factories: Any) -> RuntimeOrchestrator:
    registry = ProviderRegistry()
    for name, factory in factories.items():
        registry.register(name, factory)
    return RuntimeOrchestrator(registry=registry, graceful_cancel_timeout=0.2)


def pandas_resample(path: Path, rule: str) -> pd.DataFrame:
    """The oracle: the SPY file read by pandas, end stamps -> start, resampled."""
    df = pd.read_csv(path, sep=";", header=None,
                     names=["stamp", "open", "high", "low", "close", "volume"])  # fmt: skip
    df.index = pd.to_datetime(df["stamp"], format="%Y%m%d %H%M%S", utc=True) - pd.Timedelta("1min")
    agg = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    out = df.resample(rule, label="left", closed="left").agg(agg)
    return out.dropna(subset=["open"])


async def test_spy_replayed_into_hourly_bars_equals_pandas_resample() -> None:
    async with RuntimeOrchestrator() as rt:
        channel = await rt.bars_to_channel(["SPY"], resolution="1h", provider="replay", path=SPY)
        bars: list[Bar] = await drain(channel)
        stats = rt.stats()
    expected = pandas_resample(SPY, "1h")
    assert len(bars) == len(expected) == 320
    got = [(b.ts, b.open, b.high, b.low, b.close, b.volume) for b in bars]
    want = [
        (ts.to_pydatetime(), r.open, r.high, r.low, r.close, float(r.volume))
        for ts, r in expected.iterrows()
    ]
    assert got == want  # every OHLCV value, exactly
    assert {b.symbol for b in bars} == {"SPY"} and {b.resolution for b in bars} == {"1h"}
    (only,) = stats.values()
    assert (only.provider, only.native_resolution, only.state) == ("replay", "1m", "finished")
    # counted at the edge in the provider's 1-minute bars: 320 hourly bars stand for them
    assert only.received == 14_180 and only.channel.accepted == 320
    assert only.dropped == {"resampled": 14_180 - 320}


async def test_resampling_a_synthetic_stream_matches_its_own_aggregation() -> None:
    def five_second(**kw: Any) -> SyntheticSource:
        return SyntheticSource(**{**kw, "bar_resolution": "5s"})

    kw = {"start": START, "rate": None, "max_items": 2 * 12 * 3}  # 3 minutes of 2 symbols
    rt = runtime_with(fives=five_second)
    async with rt:
        minute = await drain(await rt.bars_to_channel(["A", "B"], "1m", provider="fives", **kw))
        fine = await drain(await rt.bars_to_channel(["A", "B"], "5s", provider="fives", **kw))
    assert len(fine) == 72 and len(minute) == 6
    for bar in minute:
        parts = [f for f in fine if f.symbol == bar.symbol and bar.ts <= f.ts < bar.end]
        assert len(parts) == 12
        assert (bar.open, bar.close) == (parts[0].open, parts[-1].close)
        assert bar.high == max(p.high for p in parts) and bar.low == min(p.low for p in parts)
        assert bar.volume == sum(p.volume for p in parts)


async def test_quotes_to_channel_pumps_everything_then_closes() -> None:
    async with RuntimeOrchestrator() as rt:
        channel = await rt.quotes_to_channel(
            ["AAPL", "MSFT"], max_buffer=16, provider="synthetic", start=START, rate=None,
            max_items=1_000,
        )  # fmt: skip
        quotes = await drain(channel)
        (stats,) = rt.stats().values()
    assert len(quotes) == 1_000 and all(isinstance(q, Quote) for q in quotes)
    assert channel.closed and stats.state == "finished" and stats.received == 1_000
    assert stats.channel.high_water <= 16  # bounded: the pump waited for the consumer


async def test_default_provider_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_PROVIDER", "synthetic")
    async with RuntimeOrchestrator() as rt:
        channel = await rt.bars_to_channel(["AAPL"], resolution="1m", start=START, max_items=3)
        bars = await drain(channel)
        assert [s.provider for s in rt.stats().values()] == ["synthetic"]
    assert [b.resolution for b in bars] == ["1m"] * 3


async def test_default_ibkr_without_its_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mdp_core.providers.ibkr", None)
    async with RuntimeOrchestrator() as rt:
        with pytest.raises(ProviderError, match=r"pip install 'mdp\[ibkr\]'"):
            await rt.quotes_to_channel(["AAPL"])
        assert rt.stats() == {}


async def test_a_failing_provider_error_reaches_the_consumer() -> None:
    boom = ProviderError("upstream connection lost")
    rt = runtime_with(flaky=lambda **kw: ScriptedSource(**kw, count=3, error=boom))
    async with rt:
        channel = await rt.quotes_to_channel(["AAPL"], provider="flaky")
        got: list[Quote] = []
        with pytest.raises(ProviderError, match="upstream connection lost") as caught:
            async with asyncio.timeout(10):
                async for quote in channel.iter():
                    got.append(quote)
        assert caught.value is boom and len(got) == 3  # data first, then the error
        (stats,) = rt.stats().values()
        assert stats.state == "failed" and stats.error == "ProviderError: upstream connection lost"


async def test_a_provider_that_fails_to_start_opens_no_stream() -> None:
    sources: list[ScriptedSource] = []

    def factory(**kw: Any) -> ScriptedSource:
        sources.append(ScriptedSource(**kw, start_error=ProviderError("gateway refused")))
        return sources[-1]

    async with runtime_with(down=factory) as rt:
        with pytest.raises(ProviderError, match="gateway refused"):
            await rt.quotes_to_channel(["AAPL"], provider="down")
        assert rt.stats() == {} and sources[0].stop_calls == 1  # cleaned up


async def test_stop_ends_a_provider_that_ignores_stop_within_the_timeout() -> None:
    rt = runtime_with(stubborn=lambda **kw: ScriptedSource(**kw, count=2, hang=True))
    channel = await rt.quotes_to_channel(["AAPL"], provider="stubborn")
    first = await drain(channel, limit=2)
    async with asyncio.timeout(10):  # a hang bound, not a speed measure
        await rt.stop()
    (stats,) = rt.stats().values()
    assert stats.state == "stopped" and channel.closed
    assert len(first) == 2 and await drain(channel) == []  # ends cleanly, no error
    async with asyncio.timeout(10):
        await rt.stop()  # idempotent


async def test_stop_releases_a_pump_blocked_on_a_full_channel() -> None:
    async with asyncio.timeout(10):
        rt = RuntimeOrchestrator(graceful_cancel_timeout=0.2)
        channel = await rt.quotes_to_channel(["AAPL"], max_buffer=4, provider="synthetic",
                                             start=START, rate=None)  # fmt: skip
        while len(channel) < 4:  # fill it; nobody consumes
            await asyncio.sleep(0)
        await rt.stop()
    (stats,) = rt.stats().values()
    # the pump waits with no record in hand (each goes in before it waits): nothing lost
    assert channel.closed and len(await drain(channel)) == 4 == stats.received


async def test_leaving_the_context_stops_a_live_stream_cleanly() -> None:
    async with RuntimeOrchestrator() as rt:
        channel = await rt.quotes_to_channel(["AAPL"], provider="synthetic", rate=50.0)
        assert len(await drain(channel, limit=3)) == 3
    rest = await drain(channel)  # what was buffered, then a clean end
    assert channel.closed and all(q.symbol == "AAPL" for q in rest)
    (stats,) = rt.stats().values()
    assert stats.state == "stopped"


async def test_a_stopped_runtime_refuses_new_streams() -> None:
    rt = RuntimeOrchestrator()
    await rt.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await rt.quotes_to_channel(["AAPL"], provider="synthetic")


async def test_overflow_policy_is_applied_and_counted() -> None:
    async with RuntimeOrchestrator() as rt:
        channel = await rt.quotes_to_channel(
            ["AAPL"], max_buffer=10, provider="synthetic", overflow="drop_oldest",
            start=START, rate=None, max_items=500,
        )  # fmt: skip
        async with asyncio.timeout(30):
            while not channel.closed:  # the provider has put all 500 (drop_oldest never waits)
                await asyncio.sleep(0)
        got = await drain(channel)
    stats = channel.stats()
    assert (stats.accepted, stats.dropped, len(got)) == (500, 490, 10)
    # the newest ten survive, in order
    assert [q.ts for q in got] == [START + timedelta(milliseconds=i) for i in range(490, 500)]


async def test_resolution_that_is_not_a_multiple_is_refused() -> None:
    async with RuntimeOrchestrator() as rt:
        with pytest.raises(ValueError, match=r"delivers 1m bars: resolution '30s'.*multiple of 1m"):
            await rt.bars_to_channel(["SPY"], resolution="30s", provider="replay", path=SPY)
        with pytest.raises(ValueError, match="unsupported resolution '7m'"):
            await rt.bars_to_channel(["SPY"], resolution="7m", provider="replay", path=SPY)
        assert rt.stats() == {}


def test_graceful_cancel_timeout_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_GRACEFUL_CANCEL_TIMEOUT", "1.5")
    assert RuntimeOrchestrator().graceful_cancel_timeout == 1.5
    assert RuntimeOrchestrator(graceful_cancel_timeout=0.3).graceful_cancel_timeout == 0.3
    with pytest.raises(ValueError, match="graceful_cancel_timeout 0"):
        RuntimeOrchestrator(graceful_cancel_timeout=0)


async def test_a_consumer_closing_its_channel_stops_the_provider() -> None:
    sources: list[ScriptedSource] = []

    def factory(**kw: Any) -> ScriptedSource:
        sources.append(ScriptedSource(**kw, count=50))
        return sources[-1]

    async with runtime_with(scripted=factory) as rt:
        channel = await rt.quotes_to_channel(["AAPL"], max_buffer=2, provider="scripted")
        assert len(await drain(channel, limit=1)) == 1
        channel.close()  # the consumer gives up
        async with asyncio.timeout(10):
            await sources[0].stopped.wait()  # the runtime stopped the provider
        (stats,) = rt.stats().values()
        assert stats.state == "stopped" and stats.received < 50
        # what arrived after the consumer gave up is counted, not silently gone
        assert stats.received == stats.channel.accepted + stats.dropped.get("closed", 0)
