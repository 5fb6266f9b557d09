"""SyntheticSource: determinism, record invariants, clocks, max_items and stop."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from mdp_core.models import RESOLUTIONS, Bar, Quote, Record
from mdp_core.providers.base import ProviderError
from mdp_core.providers.synthetic import SyntheticSource

START = datetime(2024, 1, 2, 14, 30, 7, tzinfo=UTC)


async def collect(src: SyntheticSource) -> list[Record]:
    async with asyncio.timeout(30), src:
        return [record async for record in src.stream()]


def simulated(
    symbols: list[str], mode: str = "quotes", res: str = "5s", **kw: object
) -> SyntheticSource:
    kw = {"start": START, "rate": None, "max_items": 200, **kw}
    return SyntheticSource(symbols, mode, res, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["quotes", "bars"])
async def test_same_seed_and_symbols_give_identical_records(mode: str) -> None:
    first = await collect(simulated(["AAPL", "MSFT"], mode, seed=7))
    again = await collect(simulated(["AAPL", "MSFT"], mode, seed=7))
    other = await collect(simulated(["AAPL", "MSFT"], mode, seed=8))
    assert len(first) == 200 and first == again
    assert [r.to_dict() for r in first] != [r.to_dict() for r in other]


async def test_a_symbols_walk_does_not_depend_on_the_other_symbols() -> None:
    alone = await collect(simulated(["AAPL"], max_items=50))
    mixed = await collect(simulated(["MSFT", "AAPL", "IBM"], max_items=150))
    assert [r for r in mixed if r.symbol == "AAPL"] == alone


async def test_stream_replays_from_the_beginning_each_call() -> None:
    src = simulated(["AAPL"], max_items=20)
    assert await collect(src) == await collect(src)


async def test_quotes_have_bid_below_ask_sizes_and_unique_increasing_times() -> None:
    quotes = await collect(simulated(["AAPL", "MSFT"], max_items=2_000))
    by_symbol: dict[str, list[Quote]] = {}
    for q in quotes:
        assert isinstance(q, Quote)
        assert q.bid is not None and q.ask is not None and q.bid < q.ask
        assert q.bid_size and q.bid_size > 0 and q.ask_size and q.ask_size > 0
        assert round(q.bid * 100) == pytest.approx(q.bid * 100)  # on the 0.01 grid
        by_symbol.setdefault(q.symbol, []).append(q)
    for series in by_symbol.values():
        gaps = {b.ts - a.ts for a, b in itertools.pairwise(series)}
        assert gaps == {timedelta(milliseconds=1)}  # simulated clock, unthrottled: 1 ms steps
    assert quotes[0].ts == START
    assert len({q.key for q in quotes}) == len(quotes)


async def test_simulated_quote_step_is_one_over_rate() -> None:
    quotes = await collect(simulated(["AAPL"], rate=400.0, max_items=5))
    assert [q.ts - START for q in quotes] == [timedelta(seconds=i / 400) for i in range(5)]


@pytest.mark.parametrize("res", list(RESOLUTIONS))
async def test_bars_are_consistent_and_epoch_aligned_at_every_resolution(res: str) -> None:
    bars = await collect(simulated(["AAPL", "MSFT"], "bars", res, max_items=400))
    step = timedelta(seconds=RESOLUTIONS[res])
    previous: dict[str, Bar] = {}
    for bar in bars:
        assert isinstance(bar, Bar) and bar.resolution == res
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
        assert bar.volume > 0
        assert int(bar.ts.timestamp()) % RESOLUTIONS[res] == 0
        before = previous.get(bar.symbol)
        if before is not None:
            assert bar.ts - before.ts == step  # consecutive windows, no gaps
            assert bar.open == before.close  # the walk continues
        previous[bar.symbol] = bar
    assert bars[0].ts <= START < bars[0].ts + step


async def test_max_items_counts_records_over_all_symbols() -> None:
    src = simulated(["A", "B", "C"], max_items=5)
    records = await collect(src)
    assert [r.symbol for r in records] == ["A", "B", "C", "A", "B"]
    assert src.emitted == 5
    assert await collect(simulated(["A"], max_items=0)) == []


async def test_live_quotes_carry_the_real_utc_time() -> None:
    before = datetime.now(UTC)
    quotes = await collect(SyntheticSource(["AAPL", "MSFT"], rate=None, max_items=500))
    after = datetime.now(UTC)
    assert all(before <= q.ts <= after for q in quotes)
    assert len({q.key for q in quotes}) == 500


async def test_live_bars_start_with_the_last_closed_window_never_in_the_future() -> None:
    before = datetime.now(UTC)
    bars = await collect(SyntheticSource(["AAPL", "MSFT"], "bars", "1h", max_items=2))
    assert [b.symbol for b in bars] == ["AAPL", "MSFT"]
    for bar in bars:
        assert isinstance(bar, Bar)
        assert bar.end <= datetime.now(UTC)
        assert bar.end > before - timedelta(hours=1)  # the last closed hour, not an older one
        assert int(bar.ts.timestamp()) % 3600 == 0


async def test_time_compression_runs_the_live_clock_faster() -> None:
    # 1000x: a 1 s window closes every millisecond of wall time
    bars = await collect(
        SyntheticSource(["AAPL"], "bars", "1s", time_compression=1000.0, rate=None, max_items=4)
    )
    assert [b.ts - bars[0].ts for b in bars] == [timedelta(seconds=i) for i in range(4)]


async def test_stop_ends_a_paced_stream_promptly() -> None:
    src = SyntheticSource(["AAPL"], rate=0.001)  # the second round is due in 1000 s
    async with asyncio.timeout(10):
        await src.start()
        stream = src.stream()
        first = await anext(stream)
        assert first.symbol == "AAPL"
        waiting = asyncio.create_task(anext(stream, None))
        await asyncio.sleep(0)  # let it block in the pacing wait
        await src.stop()
        assert await waiting is None  # ended, not hung for 1000 s


async def test_unthrottled_stream_lets_other_tasks_run() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    records = await collect(simulated(["A", "B"], max_items=5_000))
    task.cancel()
    assert len(records) == 5_000 and ticks > 0


async def test_stream_before_start_is_an_error() -> None:
    stream: AsyncIterator[Record] = SyntheticSource(["A"]).stream()
    with pytest.raises(ProviderError, match="before start"):
        await anext(stream)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": -1}, "rate -1 is invalid"),
        ({"time_compression": 0}, "time_compression 0 is invalid"),
        ({"max_items": -3}, "max_items -3 is invalid"),
        ({"tick_size": 0}, "tick_size 0 is invalid"),
        ({"start": datetime(2024, 1, 2)}, "is naive"),
        ({"bar_resolution": "7s", "mode": "bars"}, "unsupported resolution '7s'"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticSource(["A"], **kwargs)  # type: ignore[arg-type]
