"""Quote and Bar: validation, normalisation, round trips."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdp_core.models import (
    RESOLUTIONS,
    Bar,
    Quote,
    parse_resolution,
    record_from_dict,
    resolution_seconds,
)
from mdp_core.providers.base import normalize_symbols
from mdp_core.windows import InvalidEvent, OhlcWindows

TS = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def test_quote_normalises_symbol_and_converts_to_utc() -> None:
    eastern = timezone(timedelta(hours=-5))
    q = Quote(" msft ", datetime(2024, 1, 2, 9, 30, tzinfo=eastern), bid=1, ask=2)
    assert q.symbol == "MSFT"
    assert q.ts == TS and q.ts.tzinfo is UTC
    assert q.bid == 1.0 and isinstance(q.bid, float)


def test_pandas_timestamp_becomes_plain_utc_datetime() -> None:
    q = Quote("AAPL", pd.Timestamp("2024-01-02 09:30", tz="America/New_York"))
    assert type(q.ts) is datetime and q.ts == TS


@pytest.mark.parametrize(
    "ts",
    [
        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),  # overflows a day's partition bounds
        datetime(1, 1, 1, tzinfo=UTC),  # a partition retention would never drop
        datetime(2200, 1, 1, tzinfo=UTC),
        datetime(1899, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5))),  # past UTC's end
    ],
)
def test_timestamps_outside_a_sane_range_are_refused(ts: datetime) -> None:
    for build in (
        lambda: Quote("AAPL", ts, bid=1.0),
        lambda: Bar("AAPL", ts, 1.0, 1.0, 1.0, 1.0, 1.0, "1m"),
    ):
        with pytest.raises(ValueError, match=r"is out of range: expected a time from 1900-01-01"):
            build()
    Quote("AAPL", datetime(1900, 1, 1, tzinfo=UTC), bid=1.0)  # the edges: first accepted,
    Quote("AAPL", datetime(2199, 12, 31, 23, 59, 59, tzinfo=UTC), bid=1.0)  # last accepted


def test_naive_timestamp_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"Quote\.ts .* is naive: expected a timezone-aware"):
        Quote("AAPL", datetime(2024, 1, 2, 14, 30))


@pytest.mark.parametrize("symbol", ["", "   ", "A\x00B", "X" * 65])
def test_bad_symbols_are_refused(symbol: str) -> None:
    with pytest.raises(ValueError, match="symbol"):
        Quote(symbol, TS)


@pytest.mark.parametrize("symbol", ["", "   ", "A\x00B", "X" * 65, "Y" * 70])
def test_providers_and_windows_refuse_what_records_refuse(symbol: str) -> None:
    # One rule (models.normalize_symbol): a symbol a stream accepts never fails every record.
    named = re.escape(f"invalid symbol {symbol!r}")
    with pytest.raises(ValueError, match=named):
        normalize_symbols([symbol])
    with pytest.raises(InvalidEvent, match=named):
        OhlcWindows("1m").add(symbol, TS, 1.0)


def test_the_longest_symbol_is_accepted_everywhere() -> None:
    longest = "Z" * 64
    assert normalize_symbols([longest.lower()]) == [longest]
    assert Quote(longest, TS).symbol == longest
    bars = OhlcWindows("1m").add(longest, TS, 1.0)
    assert bars is not None and list(bars) == []  # accepted: not late, nothing closed yet
    with pytest.raises(InvalidEvent, match="symbol 'zz' is not normalised: expected 'ZZ'"):
        OhlcWindows("1m").add("zz", TS, 1.0)


def test_nan_price_means_absent_but_inf_and_negative_are_errors() -> None:
    q = Quote("AAPL", TS, bid=math.nan, ask=2.0, bid_size=math.nan)
    assert q.bid is None and q.bid_size is None
    for field, value in [("bid", -1.0), ("ask", 0.0), ("last", math.inf), ("bid_size", -5.0)]:
        with pytest.raises(ValueError, match=f"Quote.{field} .* is invalid"):
            Quote("AAPL", TS, **{field: value})


def test_records_are_immutable_and_slotted() -> None:
    q = Quote("AAPL", TS, bid=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.bid = 2.0  # type: ignore[misc]
    assert not hasattr(q, "__dict__")


def test_bar_checks_ohlc_consistency_and_resolution() -> None:
    bar = Bar("spy", TS, 10, 11, 9, 10.5, 100, "1 min", trade_count=3.0)
    assert (bar.symbol, bar.resolution, bar.trade_count) == ("SPY", "1m", 3)
    assert bar.end == TS + timedelta(minutes=1)
    with pytest.raises(ValueError, match="expected low <= open, close <= high"):
        Bar("SPY", TS, 12, 11, 9, 10, 100, "1m")
    with pytest.raises(ValueError, match=r"Bar\.volume -1 is invalid"):
        Bar("SPY", TS, 10, 11, 9, 10, -1, "1m")
    with pytest.raises(ValueError, match=r"Bar\.open is NaN"):
        Bar("SPY", TS, math.nan, 11, 9, 10, 1, "1m")
    with pytest.raises(ValueError, match=r"trade_count 1\.5 is invalid"):
        Bar("SPY", TS, 10, 11, 9, 10, 1, "1m", trade_count=1.5)


@pytest.mark.parametrize(
    ("given_value", "label"),
    [
        ("5s", "5s"),
        ("5 secs", "5s"),
        ("60s", "1m"),
        ("1min", "1m"),
        ("1 MIN", "1m"),
        ("15 minutes", "15m"),
        ("1 hour", "1h"),
        ("1H", "1h"),
        ("1D", "1d"),
        (timedelta(seconds=30), "30s"),
        (timedelta(hours=1), "1h"),
    ],
)
def test_resolution_spellings_normalise(given_value: str | timedelta, label: str) -> None:
    assert parse_resolution(given_value) == label


@pytest.mark.parametrize("bad", ["7s", "2h", "", "5 parsecs", "abc", timedelta(seconds=1.5)])
def test_unknown_resolution_names_value_and_allowed_labels(bad: str | timedelta) -> None:
    with pytest.raises(ValueError, match=r"unsupported resolution .*expected one of 1s, 5s"):
        parse_resolution(bad)


def test_resolution_seconds_cover_every_label() -> None:
    assert [resolution_seconds(label) for label in RESOLUTIONS] == list(RESOLUTIONS.values())


prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False)
sizes = st.one_of(st.none(), st.floats(min_value=0, max_value=1e9, allow_nan=False))
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(
    symbol=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.", min_size=1, max_size=8),
    ts=times,
    bid=st.one_of(st.none(), prices),
    ask=st.one_of(st.none(), prices),
    size=sizes,
)
def test_quote_round_trips_through_dict(
    symbol: str, ts: datetime, bid: float | None, ask: float | None, size: float | None
) -> None:
    q = Quote(symbol, ts, bid=bid, ask=ask, bid_size=size, source="test")
    again = record_from_dict("quote", q.to_dict())
    assert again == q and again.ts.tzinfo is UTC


@given(ts=times, a=prices, b=prices, c=prices, d=prices, volume=st.floats(0, 1e9))
def test_bar_round_trips_through_dict(
    ts: datetime, a: float, b: float, c: float, d: float, volume: float
) -> None:
    low, high = min(a, b, c, d), max(a, b, c, d)
    bar = Bar("X", ts, a, high, low, d, volume, "5s", vwap=c, trade_count=7)
    assert record_from_dict("bar", bar.to_dict()) == bar


def test_unknown_record_kind() -> None:
    with pytest.raises(ValueError, match="unknown record kind 'trade'"):
        record_from_dict("trade", {})
