"""Market models, framing and request-value parsing of the simulated gateway (no sockets)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from mdp_core.gateway import RandomWalkModel, ReplayModel, SimClock, SimulatedGateway
from mdp_core.gateway.codec import FrameError, decode_payload, encode, read_frame
from mdp_core.gateway.history import parse_bar_size, parse_duration, parse_end
from mdp_core.gateway.market import _split, load_minute_file
from tests.conftest import DATA_DIR

T0 = int(datetime(2024, 5, 1, 13, 30, tzinfo=UTC).timestamp())


def test_random_walk_is_a_pure_function_of_seed_symbol_and_time() -> None:
    a = RandomWalkModel("AAPL", seed=7).bars_between(T0, T0 + 600)
    fresh = RandomWalkModel("AAPL", seed=7)
    # computed in another order (cold caches, backwards) the bars are the same
    b = [fresh.bar(t) for t in reversed(range(T0, T0 + 600, 5))][::-1]
    assert a == b and len(a) == 120
    assert a != RandomWalkModel("AAPL", seed=8).bars_between(T0, T0 + 600)
    assert a != RandomWalkModel("MSFT", seed=7).bars_between(T0, T0 + 600)


def test_random_walk_bars_are_the_aggregate_of_their_ticks() -> None:
    model = RandomWalkModel("SPY", seed=1, trades_per_bar=(2, 5))
    for bar in model.bars_between(T0, T0 + 3600):
        ticks = model.ticks(bar.time)
        assert 2 <= len(ticks) == bar.count <= 5
        assert all(bar.time <= t.time < bar.time + 5 for t in ticks)
        assert [t.time for t in ticks] == sorted(t.time for t in ticks)
        lasts = [t.last for t in ticks]
        assert (bar.open, bar.high, bar.low, bar.close) == (
            lasts[0], max(lasts), min(lasts), lasts[-1],
        )  # fmt: skip
        assert bar.volume == sum(t.last_size for t in ticks) > 0
        assert all(0 < t.bid < t.ask and round(t.last, 2) == t.last for t in ticks)
        assert bar.to_bar().resolution == "5s"
    mid = model.bar(T0, "MIDPOINT")
    assert mid is not None and mid.volume == -1 and mid.count == -1


def test_random_walk_stays_near_its_base_price_over_days() -> None:
    model = RandomWalkModel("AAPL", seed=3)
    closes = [model.price_at(T0 + k * 3600) for k in range(24 * 14)]
    assert all(0.8 * 190 < c < 1.25 * 190 for c in closes)


def test_bars_between_is_half_open_and_ticks_between_too() -> None:
    model = RandomWalkModel("AAPL", seed=1)
    assert [b.time for b in model.bars_between(T0, T0 + 15)] == [T0, T0 + 5, T0 + 10]
    assert [b.time for b in model.bars_between(T0 + 1, T0 + 15.5)] == [T0 + 5, T0 + 10, T0 + 15]
    ticks = model.ticks_between(T0 + 2.5, T0 + 7.5)
    assert ticks and all(T0 + 2.5 <= t.time < T0 + 7.5 for t in ticks)
    assert ticks == [
        t for s in (T0, T0 + 5) for t in model.ticks(s) if T0 + 2.5 <= t.time < T0 + 7.5
    ]


@pytest.mark.parametrize(
    ("name", "offset"),
    [("AAPL_1min_2023-05.csv", 0), ("GOOGL_1min_2023-05.csv", 0), ("SPY_1min_2011-01.csv", -60)],
)
def test_replayed_minutes_expand_into_twelve_bars_with_the_same_ohlcv(
    name: str, offset: int
) -> None:
    path = DATA_DIR / name
    if name.startswith("SPY"):
        frame = pd.read_csv(path, sep=";", header=None, names=["date", "o", "h", "l", "c", "v"])
        times = pd.to_datetime(frame["date"], format="%Y%m%d %H%M%S", utc=True)
    else:
        frame = pd.read_csv(path).rename(
            columns={"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}
        )
        times = pd.to_datetime(frame["date"], utc=True)
    frame["start"] = [int(t.timestamp()) + offset for t in times]
    model = ReplayModel.from_file(path, anchor=T0)
    first = int(frame["start"].min())
    for row in frame.head(300).itertuples():
        minute = T0 + row.start - first
        bars = model.bars_between(minute, minute + 60)
        assert [b.time for b in bars] == list(range(minute, minute + 60, 5))
        assert (
            bars[0].open, max(b.high for b in bars), min(b.low for b in bars), bars[-1].close,
            sum(b.volume for b in bars),
        ) == (row.o, row.h, row.l, row.c, row.v)  # fmt: skip
        for bar in bars:
            assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
            assert bar.count == len(model.ticks(bar.time))
            assert all(bar.low <= t.last <= bar.high for t in model.ticks(bar.time))

    # the file loops: one period later the same minute shows again (split differently)
    def minute_ohlcv(start: int) -> tuple[float, ...]:
        bars = model.bars_between(start, start + 60)
        return (bars[0].open, max(b.high for b in bars), min(b.low for b in bars),
                bars[-1].close, sum(b.volume for b in bars))  # fmt: skip

    assert minute_ohlcv(T0 + model.period) == minute_ohlcv(T0)


def test_split_sums_exactly() -> None:
    rng = random.Random(5)
    for total in (0, 1, 11, 12, 13, 1579, 300.0, 2031.0):
        parts = _split(total, 12, rng, minimum=1)
        assert len(parts) == 12 and sum(parts) == total and all(p >= 0 for p in parts)
        if total >= 12:
            assert min(parts) >= 1


def test_load_minute_file_names_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "X_1min.csv"
    bad.write_text("time,price\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_minute_file(bad)
    broken = tmp_path / "Y_1min.csv"
    broken.write_text("20110103 090100;1;2;x;1;5\n")
    with pytest.raises(ValueError, match=r"Y_1min.csv:1: cannot parse"):
        load_minute_file(broken)


def test_sim_clock_runs_compressed_on_an_injected_clock() -> None:
    real = [100.0]
    clock = SimClock(start=T0, time_compression=60.0, clock=lambda: real[0])
    assert clock.now() == T0
    real[0] += 0.5
    assert clock.now() == T0 + 30
    with pytest.raises(ValueError, match="time_compression"):
        SimClock(time_compression=0)


def test_codec_round_trip_and_errors() -> None:
    frame = encode(1, 6, 4, 1, 190.01, 300.0, True, None)
    assert frame[4:] == b"1\x006\x004\x001\x00190.01\x00300.0\x001\x00\x00"
    assert decode_payload(frame[4:]) == ["1", "6", "4", "1", "190.01", "300.0", "1", ""]
    for bad in (b"", b"no-nul", b"\xff\xfe\x00"):
        with pytest.raises(FrameError):
            decode_payload(bad)

    async def read(data: bytes) -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader, max_bytes=8)

    assert asyncio.run(read(encode("ab"))) == b"ab\x00"
    with pytest.raises(FrameError, match="exceeds the limit"):
        asyncio.run(read(encode("a" * 20)))


def test_history_values() -> None:
    sizes = ("5 secs", "30 secs", "1 min", "5 mins", "1 hour", "1 day")
    assert [parse_bar_size(s) for s in sizes] == [5, 30, 60, 300, 3600, 86400]
    for bad in ("1 secs", "7 secs", "1 week", "five mins"):
        with pytest.raises(ValueError, match="unsupported bar size"):
            parse_bar_size(bad)
    assert [parse_duration(s) for s in ("1800 S", "1 D", "2 W")] == [1800, 86400, 14 * 86400]
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("10 minutes")
    assert parse_end("", now=123.0) == 123.0
    utc = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
    assert parse_end("20240501 12:00:00 UTC", 0) == utc
    assert parse_end("20240501-12:00:00", 0) == utc
    assert parse_end("20240501 08:00:00 US/Eastern", 0) == utc
    with pytest.raises(ValueError, match="invalid endDateTime"):
        parse_end("yesterday", 0)


def test_gateway_configuration_errors() -> None:
    with pytest.raises(ValueError, match="accounts is empty"):
        SimulatedGateway(["AAPL"], accounts=[])
    with pytest.raises(ValueError, match="invalid symbol"):
        SimulatedGateway(["AAPL", " "])
    with pytest.raises(FileNotFoundError):
        SimulatedGateway(replay=["/nonexistent/SPY_1min.csv"])
    gw = SimulatedGateway(["aapl"], replay={"SPY": DATA_DIR / "SPY_1min_2011-01.csv"})
    assert gw.symbols == ["AAPL", "SPY"]
    with pytest.raises(KeyError, match="unknown symbol 'TSLA'"):
        gw.model("TSLA")


def test_replay_started_inside_the_file_span_keeps_the_file_times() -> None:
    path = DATA_DIR / "AAPL_1min_2023-05.csv"
    start = datetime(2023, 5, 25, 14, 0, tzinfo=UTC)
    gw = SimulatedGateway(symbols=(), replay=[path], start=start)
    frame = pd.read_csv(path)
    row = frame[frame["date"] == "2023-05-25 14:00:00+00:00"].iloc[0]
    bars = gw.bars_between("AAPL", start, start.timestamp() + 60)
    assert (bars[0].open, bars[-1].close, sum(b.volume for b in bars)) == (
        row["open"], row["close"], row["volume"],
    )  # fmt: skip
