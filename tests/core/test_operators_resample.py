"""resample_ohlc / resample_bars and the window classes behind them (mdp_core.windows).

pandas is the oracle: for in-order input the bars equal
``df.groupby("symbol").resample(window, label="left", closed="left").agg(...)`` with empty
windows removed. Time is virtual everywhere (no real sleeps)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdp_core.channel import Channel
from mdp_core.models import RESOLUTIONS, Bar
from mdp_core.operators import _READ_AHEAD, OperatorStats, resample_bars, resample_ohlc
from mdp_core.windows import BarWindows, InvalidEvent, OhlcWindows, can_roll_up
from tests.core.operator_helpers import (
    T0,
    FakeClock,
    Upstream,
    bar_rows,
    collect,
    from_list,
    pandas_bars,
    pandas_ohlc,
    run,
)

Event = tuple[str, datetime, float, float]  # (symbol, ts, price, volume)


def ohlc(stream: Any, window: str, lateness: float = 0, **kwargs: Any) -> AsyncIterator[Bar]:
    return resample_ohlc(
        stream,
        get_symbol=lambda e: e[0],
        get_price=lambda e: e[2],
        get_time=lambda e: e[1],
        window=window,
        get_volume=lambda e: e[3],
        allowed_lateness=lateness,
        **kwargs,
    )


def fresh(bars: Sequence[Bar] | None) -> list[Bar]:
    """What an ``add`` returned, asserting the event was not late."""
    assert bars is not None
    return list(bars)


# -- the window classes, by hand -----------------------------------------------------------


def test_ohlc_windows_by_hand() -> None:
    w = OhlcWindows("1m", source="test")
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    assert fresh(w.add("AAA", at(0), 10.0, 1)) == []
    assert fresh(w.add("BBB", at(5), 20.0, 2)) == []
    assert fresh(w.add("AAA", at(30), 12.0, 1)) == []
    assert fresh(w.add("AAA", at(30), 9.0, 1)) == []  # same time: later arrival closes
    assert fresh(w.add("AAA", at(59.999999), 11.0, None)) == []  # None volume counts as 0
    assert w.open_windows == 2  # (window 0, AAA) and (window 0, BBB)
    bars = w.add("BBB", at(60), 21.0, 1)  # BBB's watermark reaches 60: its [0, 60) closes
    assert bars == [Bar("BBB", T0, 20.0, 20.0, 20.0, 20.0, 2.0, "1m", source="test")]
    assert w.closed_through_of("BBB") == at(60) and w.closed_through_of("AAA") == T0
    assert fresh(w.add("AAA", at(59.5), 11.5, 1)) == []  # AAA's window is still open
    assert w.add("BBB", at(59), 1.0, 1) is None  # late for BBB: nothing changes
    bars = w.add("AAA", at(61), 13.0, 1)
    assert bars == [Bar("AAA", T0, 10.0, 12.0, 9.0, 11.0, 4.0, "1m", source="test")]
    assert w.flush() == [
        Bar("AAA", at(60), 13.0, 13.0, 13.0, 13.0, 1.0, "1m", source="test", partial=True),
        Bar("BBB", at(60), 21.0, 21.0, 21.0, 21.0, 1.0, "1m", source="test", partial=True),
    ]
    assert w.flush() == []
    assert w.add("BBB", at(61), 1.0) is None  # its window was flushed
    assert w.folded == 8


def test_a_far_future_event_of_one_symbol_makes_no_other_symbol_late() -> None:
    w = OhlcWindows("1m")
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    assert fresh(w.add("AAA", at(0), 10.0)) == []
    assert fresh(w.add("ZZZ", at(86_400 * 365), 1.0)) == []  # a year ahead: a bad clock
    assert fresh(w.add("AAA", at(30), 11.0)) == []  # not late
    assert [b.symbol for b in fresh(w.add("AAA", at(60), 12.0))] == ["AAA"]
    assert w.watermark_of("AAA") == at(60) and w.watermark == at(86_400 * 365)


def test_open_is_the_earliest_event_and_close_the_latest_whatever_the_arrival_order() -> None:
    w = OhlcWindows("1m", allowed_lateness=30)
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    for s, price in [(20, 2.0), (10, 1.0), (40, 4.0), (30, 3.0), (10, 1.5), (40, 4.5)]:
        assert fresh(w.add("AAA", at(s), price)) == []
    # ties: first arrival at t=10 stays the open; last arrival at t=40 is the close
    assert w.flush() == [Bar("AAA", T0, 1.0, 4.5, 1.0, 4.5, 0.0, "1m", partial=True)]


def test_watermark_is_max_event_time_minus_lateness_and_never_regresses() -> None:
    w = OhlcWindows("5s", allowed_lateness=timedelta(seconds=2))
    assert w.watermark is None
    seen: list[datetime | None] = []
    for s in [10, 12, 11, 3, 30, 29, 31]:
        w.add("AAA", T0 + timedelta(seconds=s), 1.0)
        seen.append(w.watermark)
    assert seen == [T0 + timedelta(seconds=s) for s in [8, 10, 10, 10, 28, 28, 29]]
    bars = w.advance(T0 + timedelta(seconds=42))  # a heartbeat closes [25, 30) and [30, 35)
    assert [b.ts for b in bars] == [T0 + timedelta(seconds=25), T0 + timedelta(seconds=30)]
    assert w.advance(T0) == [] and w.watermark == T0 + timedelta(seconds=40)


def test_windows_are_epoch_aligned_and_other_timezones_are_converted() -> None:
    w = OhlcWindows("1h")
    new_york = timezone(timedelta(hours=-5))
    ts = datetime(2024, 1, 2, 9, 45, tzinfo=new_york)  # 14:45 UTC
    w.add("AAA", ts, 1.0)
    [bar] = w.flush()
    assert bar.ts == datetime(2024, 1, 2, 14, 0, tzinfo=UTC) and bar.ts.tzinfo is UTC
    d = OhlcWindows("1d")
    d.add("AAA", datetime(2024, 1, 2, 23, 59, 59, tzinfo=UTC), 1.0)
    assert d.flush()[0].ts == datetime(2024, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("AAA", T0, None, 1.0), "price None"),
        (("AAA", T0, float("nan"), 1.0), "price nan"),
        (("AAA", T0, -1.0, 1.0), "price -1.0"),
        (("AAA", T0, 1.0, -2.0), "volume -2.0"),
        (("AAA", T0, 1.0, float("inf")), "volume inf"),
        (("AAA", datetime(2024, 1, 2), 1.0, 1.0), "naive"),
        (("AAA", 1704153600.0, 1.0, 1.0), "is a float"),
        (("aaa", T0, 1.0, 1.0), "symbol 'aaa'"),
        (("", T0, 1.0, 1.0), "symbol ''"),
        ((None, T0, 1.0, 1.0), "symbol None"),
    ],
)
def test_invalid_events_raise_and_change_nothing(args: tuple, expected: str) -> None:
    w = OhlcWindows("1m")
    with pytest.raises(InvalidEvent) as err:
        w.add(*args)
    assert expected in str(err.value)
    assert w.open_windows == 0 and w.watermark is None


def test_can_roll_up_is_finer_and_divides() -> None:
    # the one rule behind resample_bars and the runtime's provider-resolution check
    assert can_roll_up("5s", "1m") and can_roll_up("1m", "1h") and can_roll_up("5 secs", "1d")
    assert not can_roll_up("1m", "1m")  # not finer
    assert not can_roll_up("1h", "1m")  # coarser
    assert not can_roll_up("10s", "15s")  # finer, but does not divide it


def test_bar_windows_weight_vwap_and_sum_trade_counts() -> None:
    w = BarWindows("1m")
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    w.add(Bar("AAA", at(0), 10, 11, 9, 10.5, 100, "5s", vwap=10.0, trade_count=3, source="x"))
    w.add(Bar("AAA", at(5), 10.5, 12, 10, 11, 300, "5s", vwap=11.0, trade_count=4, source="y"))
    w.add(Bar("BBB", at(0), 5, 5, 5, 5, 10, "5s", vwap=5.0))  # one input without trade_count
    w.add(Bar("BBB", at(5), 5, 6, 5, 6, 10, "5s", vwap=None, trade_count=2))  # and no vwap
    w.add(Bar("CCC", at(0), 5, 5, 5, 5, 0, "5s", vwap=5.0))  # zero volume: no vwap
    aaa, bbb, ccc = w.flush()
    assert aaa == Bar(
        "AAA", T0, 10, 12, 9, 11, 400, "1m", vwap=10.75, trade_count=7, source="x", partial=True
    )  # flushed before its window's last 5-second bar: partial
    assert (bbb.vwap, bbb.trade_count, bbb.volume) == (None, None, 20.0)
    assert ccc.vwap is None


@pytest.mark.parametrize(
    ("window", "resolution"), [("1m", "1m"), ("1m", "5m"), ("15s", "10s"), ("1h", "1d")]
)
def test_bars_that_cannot_roll_up_are_a_clear_error(window: str, resolution: str) -> None:
    w = BarWindows(window)
    bar = Bar("AAA", T0, 1, 1, 1, 1, 1, resolution)
    with pytest.raises(ValueError) as err:
        w.add(bar)
    message = str(err.value)
    assert f"resolution {resolution!r}" in message and f"{window!r} windows" in message
    assert "finer than the window and divide it" in message


# -- resample_ohlc against pandas ----------------------------------------------------------

SYMBOLS = ["AAA", "BBB", "CCC"]
WINDOWS = ["1s", "5s", "15s", "1m", "15m", "1h", "1d"]


@st.composite
def ordered_events(draw: st.DrawFn, max_size: int = 50) -> tuple[str, list[Event]]:
    """In-order events (non-decreasing time, ties allowed) and a window; times often sit
    exactly on window boundaries."""
    window = draw(st.sampled_from(WINDOWS))
    width_us = RESOLUTIONS[window] * 1_000_000
    us = draw(st.integers(0, 2 * width_us))
    gap = st.one_of(
        st.just(0), st.just(width_us), st.integers(1, 2 * width_us), st.integers(1, 1000)
    )
    events = []
    for _ in range(draw(st.integers(1, max_size))):
        us += draw(gap)
        symbol = draw(st.sampled_from(SYMBOLS))
        price = draw(st.integers(1, 400)) / 4
        volume = float(draw(st.integers(0, 1000)))
        events.append((symbol, T0 + timedelta(microseconds=us), price, volume))
    return window, events


def _check_bars(bars: list[Bar], window: str) -> None:
    """Invariants of any output: OHLC order, each symbol's bars in window order, one bar per
    key."""
    for bar in bars:
        assert bar.low <= bar.open <= bar.high and bar.low <= bar.close <= bar.high
        assert bar.resolution == window
    for symbol in {b.symbol for b in bars}:
        starts = [b.ts for b in bars if b.symbol == symbol]
        assert starts == sorted(starts)
    assert len({b.key for b in bars}) == len(bars)


@settings(max_examples=100, deadline=None)
@given(ordered_events())
def test_resample_ohlc_equals_pandas_for_in_order_input(case: tuple[str, list[Event]]) -> None:
    window, events = case
    stats = OperatorStats()
    bars = run(lambda: ohlc(from_list(events), window, stats=stats))
    assert bar_rows(bars) == pandas_ohlc(events, window)
    _check_bars(bars, window)
    assert sum(b.volume for b in bars) == sum(e[3] for e in events)  # volume conserved
    assert (stats.seen, stats.aggregated, stats.late, stats.invalid) == (len(events),) * 2 + (0, 0)
    assert stats.emitted == len(bars)


@settings(max_examples=100, deadline=None)
@given(ordered_events(), st.data())
def test_out_of_order_within_lateness_gives_the_sorted_result(
    case: tuple[str, list[Event]], data: st.DataObject
) -> None:
    window, events = case
    lateness_us = data.draw(st.integers(0, 3 * RESOLUTIONS[window] * 1_000_000))
    jitter = data.draw(
        st.lists(st.integers(0, lateness_us), min_size=len(events), max_size=len(events))
    )
    # Arrival sorted by time + jitter (jitter <= lateness): no event is late.
    arrival = [
        e
        for _, _, e in sorted(
            (
                (e[1] + timedelta(microseconds=j), i, e)
                for i, (e, j) in enumerate(zip(events, jitter, strict=True))
            )
        )
    ]
    by_time = sorted(arrival, key=lambda e: e[1])  # stable: ties keep arrival order
    stats = OperatorStats()
    lateness = lateness_us / 1e6
    shuffled = run(lambda: ohlc(from_list(arrival), window, lateness, stats=stats))
    in_order = run(lambda: ohlc(from_list(by_time), window, lateness))
    assert sorted(shuffled, key=_key) == sorted(in_order, key=_key)
    assert bar_rows(shuffled) == pandas_ohlc(by_time, window)
    assert stats.late == 0
    _check_bars(shuffled, window)


def _key(bar: Bar) -> tuple[datetime, str]:
    return (bar.ts, bar.symbol)


def _late_reference(arrival: list[Event], window: str, lateness_us: int) -> list[Event]:
    """Which events must be late: their window starts before their symbol's last closed
    boundary."""
    width = RESOLUTIONS[window] * 1_000_000
    max_us: dict[str, int] = {}
    late = []
    for e in arrival:
        us = (e[1] - T0) // timedelta(microseconds=1)
        if e[0] in max_us:
            closed_through = (max_us[e[0]] - lateness_us) // width * width
            if us // width * width < closed_through:
                late.append(e)
        max_us[e[0]] = max(max_us.get(e[0], us), us)
    return late


@settings(max_examples=100, deadline=None)
@given(ordered_events(), st.data())
def test_events_later_than_allowed_are_reported_and_nothing_is_lost(
    case: tuple[str, list[Event]], data: st.DataObject
) -> None:
    window, events = case
    width_us = RESOLUTIONS[window] * 1_000_000
    lateness_us = data.draw(st.sampled_from([0, width_us // 2, width_us]))
    arrival = data.draw(st.permutations(events))
    stats = OperatorStats()
    late: list[Event] = []
    bars = run(
        lambda: ohlc(
            from_list(arrival), window, lateness_us / 1e6, on_late=late.append, stats=stats
        )
    )
    assert [id(e) for e in late] == [id(e) for e in _late_reference(arrival, window, lateness_us)]
    assert stats.late == len(late)
    assert stats.aggregated + stats.late == stats.seen == len(events)  # nothing lost
    late_ids = {id(e) for e in late}  # on_late gets the very objects; equal events may repeat
    kept = sorted((e for e in arrival if id(e) not in late_ids), key=lambda e: e[1])  # stable
    assert bar_rows(bars) == pandas_ohlc(kept, window)
    assert sum(b.volume for b in bars) + sum(e[3] for e in late) == sum(e[3] for e in events)
    _check_bars(bars, window)


@settings(max_examples=60, deadline=None)
@given(ordered_events(), st.data())
def test_results_do_not_depend_on_how_the_input_is_chunked(
    case: tuple[str, list[Event]], data: st.DataObject
) -> None:
    window, events = case
    seed = data.draw(st.integers(0, 2**32))
    capacity = data.draw(st.integers(1, 8))

    async def through_channel() -> list[Bar]:
        channel: Channel[Event] = Channel(capacity)
        rng = random.Random(seed)

        async def produce() -> None:
            i = 0
            while i < len(events):
                chunk = rng.randint(1, 5)
                for e in events[i : i + chunk]:
                    await channel.put(e)
                i += chunk
                await asyncio.sleep(0)  # let the consumer run between chunks
            channel.close()

        producer = asyncio.create_task(produce())
        bars = await collect(ohlc(channel, window, 1.0))
        await producer
        return bars

    direct = run(lambda: ohlc(from_list(events), window, 1.0))
    assert asyncio.run(through_channel()) == direct
    # and straight through the window class
    w = OhlcWindows(window, allowed_lateness=1.0)
    sliced: list[Bar] = []
    for e in events:
        sliced.extend(w.add(*e) or [])
    sliced.extend(w.flush())
    assert sliced == direct


async def test_invalid_events_are_counted_and_skipped() -> None:
    events: list[Event] = [
        ("AAA", T0, 10.0, 1.0),
        ("AAA", T0 + timedelta(seconds=1), float("nan"), 1.0),
        ("aaa", T0 + timedelta(seconds=2), 11.0, 1.0),
        ("AAA", datetime(2024, 1, 2, 0, 0, 3), 12.0, 1.0),  # naive
        ("AAA", T0 + timedelta(seconds=4), 13.0, 1.0),
    ]
    stats = OperatorStats()
    bars = await collect(ohlc(from_list(events), "1m", stats=stats))
    assert bars == [Bar("AAA", T0, 10.0, 13.0, 10.0, 13.0, 2.0, "1m", partial=True)]
    assert (stats.seen, stats.aggregated, stats.invalid, stats.late) == (5, 2, 3, 0)


async def test_resample_ohlc_design_example_on_quotes() -> None:
    from mdp_core.models import Quote

    quotes = [
        Quote("AAPL", T0 + timedelta(seconds=s), last=p, last_size=v)
        for s, p, v in [(1, 10.0, 1), (20, 11.0, 2), (59, 9.5, 1), (61, 12.0, 5)]
    ]
    bars = await collect(
        resample_ohlc(
            from_list(quotes),
            get_symbol=lambda q: q.symbol,
            get_price=lambda q: q.last,
            get_time=lambda q: q.ts,
            window=timedelta(minutes=1),
            get_volume=lambda q: q.last_size,
            source="synthetic",
        )
    )
    assert bars == [
        Bar("AAPL", T0, 10.0, 11.0, 9.5, 9.5, 4.0, "1m", source="synthetic"),
        Bar(
            "AAPL",
            T0 + timedelta(minutes=1),
            12.0,
            12.0,
            12.0,
            12.0,
            5.0,
            "1m",
            source="synthetic",
            partial=True,
        ),
    ]


# -- resample_bars against pandas ----------------------------------------------------------


@st.composite
def ordered_bars(draw: st.DrawFn) -> tuple[str, list[Bar]]:
    source, window = draw(st.sampled_from([("5s", "1m"), ("1m", "1h"), ("5s", "5m"), ("1h", "1d")]))
    step = RESOLUTIONS[source]
    slot = draw(st.integers(0, 3600 // step))
    bars: list[Bar] = []
    for _ in range(draw(st.integers(1, 40))):
        slot += draw(st.sampled_from([0, 1, 1, 2, 7, 30]))
        symbol = draw(st.sampled_from(SYMBOLS))
        if any(b.symbol == symbol and b.ts == T0 + timedelta(seconds=slot * step) for b in bars):
            continue  # one bar per (symbol, ts), as a feed delivers them
        prices = sorted(draw(st.lists(st.integers(1, 400), min_size=4, max_size=4)))
        low, high = prices[0] / 4, prices[3] / 4
        open_, close = draw(st.permutations([prices[1] / 4, prices[2] / 4]))
        volume = float(draw(st.integers(0, 10_000)))
        ts = T0 + timedelta(seconds=slot * step)
        bars.append(Bar(symbol, ts, open_, high, low, close, volume, source))
    return window, bars


@settings(max_examples=100, deadline=None)
@given(ordered_bars())
def test_resample_bars_equals_pandas(case: tuple[str, list[Bar]]) -> None:
    window, bars = case
    stats = OperatorStats()
    out = run(lambda: resample_bars(from_list(bars), window, stats=stats))
    assert bar_rows(out) == pandas_bars(bars, window)
    _check_bars(out, window)
    assert sum(b.volume for b in out) == sum(b.volume for b in bars)
    assert stats.aggregated == stats.seen == len(bars) and stats.emitted == len(out)


async def test_resample_bars_5s_to_1m_by_hand() -> None:
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    five = [Bar("AAA", at(s), 10 + s, 11 + s, 9 + s, 10.5 + s, 1, "5s") for s in range(0, 70, 5)]
    out = await collect(resample_bars(from_list(five), "1m"))
    assert out == [
        Bar("AAA", T0, 10, 66, 9, 65.5, 12, "1m"),
        Bar("AAA", at(60), 70, 76, 69, 75.5, 2, "1m", partial=True),  # 2 of its 12 bars
    ]


async def test_resample_bars_wrong_resolution_fails_on_the_first_such_bar() -> None:
    up = Upstream(
        [
            Bar("AAA", T0, 1, 1, 1, 1, 1, "5s"),
            Bar("AAA", T0 + timedelta(minutes=5), 1, 1, 1, 1, 1, "5m"),
        ]
    )
    with pytest.raises(ValueError, match=r"resolution '5m'.*'1m' windows"):
        await collect(resample_bars(up, "1m"))
    assert up.closed


# -- idle_timeout, on virtual time ---------------------------------------------------------


async def test_idle_timeout_emits_open_windows_while_the_upstream_is_silent() -> None:
    clock = FakeClock(now=0.0, max_step=1.0)  # timers advance virtual time 1 s at a time
    gate = asyncio.Event()
    silent = asyncio.Event()
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731

    async def feed() -> AsyncIterator[Event]:
        yield ("AAA", at(0), 10.0, 1.0)
        yield ("AAA", at(10), 11.0, 1.0)
        silent.set()
        await gate.wait()  # silence until the test opens the gate
        yield ("AAA", at(20), 12.0, 1.0)  # its window was flushed: late
        yield ("AAA", at(70), 13.0, 1.0)

    late: list[Event] = []
    stats = OperatorStats()
    stream = ohlc(
        feed(),
        "1m",
        idle_timeout=5.0,
        on_late=late.append,
        clock=clock,
        sleep=clock.sleep,
        stats=stats,
    )
    async with asyncio.timeout(10):
        first = await anext(stream)
        assert silent.is_set() and not gate.is_set()  # emitted during the silence
        assert first == Bar("AAA", T0, 10.0, 11.0, 10.0, 11.0, 2.0, "1m", partial=True)
        assert clock.now == 5.0  # exactly idle_timeout after the last item
        assert stats.emitted == 1 and stats.seen == 2
        gate.set()
        rest = await collect(stream)
    assert rest == [Bar("AAA", at(60), 13.0, 13.0, 13.0, 13.0, 1.0, "1m", partial=True)]
    assert late == [("AAA", at(20), 12.0, 1.0)]
    assert (stats.seen, stats.aggregated, stats.late, stats.emitted) == (4, 3, 1, 2)


async def test_idle_timeout_does_not_fire_while_items_keep_coming() -> None:
    clock = FakeClock(now=0.0)
    events = [("AAA", T0 + timedelta(seconds=s), 10.0, 1.0) for s in range(0, 120, 10)]
    up = Upstream(events)  # always ready: never silent
    bars = await collect(ohlc(up, "1m", idle_timeout=5.0, clock=clock, sleep=clock.sleep))
    assert bars == await collect(ohlc(from_list(events), "1m"))
    assert up.closed


async def test_idle_timeout_keeps_an_in_flight_item() -> None:
    """A timeout while the next item is being fetched must not lose that item."""
    clock = FakeClock(now=0.0)
    release = asyncio.Event()
    fetching = asyncio.Event()

    async def feed() -> AsyncIterator[Event]:
        yield ("AAA", T0, 10.0, 1.0)
        fetching.set()
        await release.wait()
        yield ("BBB", T0 + timedelta(seconds=1), 20.0, 1.0)

    stats = OperatorStats()
    stream = ohlc(feed(), "1m", idle_timeout=1.0, clock=clock, sleep=clock.sleep, stats=stats)
    async with asyncio.timeout(10):
        flushed = await anext(stream)  # AAA flushed by the idle timer mid-fetch
        assert fetching.is_set() and flushed.symbol == "AAA"
        release.set()
        rest = await collect(stream)
    # BBB's window is its own (watermarks are per symbol): not late, and not lost
    assert [(b.symbol, b.partial) for b in rest] == [("BBB", True)]
    assert (stats.seen, stats.late, stats.aggregated) == (2, 0, 2)


# -- argument errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"window": "7m"}, ["'7m'", "1s, 5s, 10s"]),
        ({"window": timedelta(seconds=7)}, ["timedelta(seconds=7)", "expected one of"]),
        ({"allowed_lateness": -1}, ["allowed_lateness -1"]),
        ({"allowed_lateness": "1s"}, ["allowed_lateness '1s'"]),
        ({"idle_timeout": 0}, ["idle_timeout 0", "> 0"]),
        ({"idle_timeout": float("inf")}, ["idle_timeout inf"]),
        ({"source": 5}, ["source 5"]),
    ],
)
def test_resample_ohlc_rejects_bad_arguments(kwargs: dict[str, Any], words: list[str]) -> None:
    args: dict[str, Any] = {"window": "1m", **kwargs}
    with pytest.raises(ValueError) as err:
        resample_ohlc(Upstream([]), lambda e: e, lambda e: e, lambda e: e, **args)
    for word in words:
        assert word in str(err.value)


def test_resample_bars_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'2h'"):
        resample_bars(Upstream([]), "2h")
    with pytest.raises(TypeError, match="on_late 3 is not callable"):
        resample_bars(Upstream([]), "1h", on_late=3)  # type: ignore[arg-type]


async def test_idle_read_ahead_is_accounted_for_when_the_consumer_stops_early() -> None:
    events = [("AAA", T0 + timedelta(seconds=s), 10.0, 1.0) for s in range(0, 600, 7)]
    up = Upstream(events, block=True)
    stats = OperatorStats()
    stream = ohlc(up, "1m", idle_timeout=60.0, stats=stats)
    async with asyncio.timeout(10):
        await anext(stream)  # the first bar
        await stream.aclose()  # type: ignore[attr-defined]
    assert up.closed
    assert up.taken == stats.seen + stats.dropped  # taken from upstream: used or counted
    assert stats.seen == stats.aggregated


async def test_item_held_by_a_blocked_read_ahead_is_counted_when_the_consumer_stops() -> None:
    # More events than the read-ahead buffer holds: the pump fills it and waits to put one
    # more; that held item must be counted too when the consumer stops.
    events = [("AAA", T0 + timedelta(seconds=s), 10.0, 1.0) for s in range(0, 3000, 7)]
    up = Upstream(events)
    stats = OperatorStats()
    stream = ohlc(up, "1m", idle_timeout=60.0, stats=stats)
    async with asyncio.timeout(10):
        await anext(stream)  # the first bar
        await stream.aclose()  # type: ignore[attr-defined]
    assert up.closed
    assert up.taken > _READ_AHEAD  # the buffer was full with one more item held
    assert up.taken == stats.seen + stats.dropped  # taken from upstream: used or counted


async def test_resample_bars_rejects_items_that_are_not_bars() -> None:
    up = Upstream(["AAA"])
    with pytest.raises(TypeError, match="item 'AAA' is a str: expected a Bar"):
        await collect(resample_bars(up, "1m"))
    assert up.closed
