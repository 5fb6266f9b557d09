"""Request planning: spans cut to IB's longest request per bar size, merged only across gaps
that may be asked for, never overlapping, never outside the (bar-aligned) spans."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from mdp_core.providers.ibkr.history import (
    bar_size_setting,
    classify_history_error,
    duration_text,
    plan_requests,
)

D = datetime(2024, 1, 8, tzinfo=UTC)  # a Monday


def _session(day: int) -> tuple[datetime, datetime]:
    start = D + timedelta(days=day, hours=14, minutes=30)
    return start, start + timedelta(hours=6, minutes=30)


def test_five_second_bars_are_asked_an_hour_at_a_time() -> None:
    plan = plan_requests("AAPL", "5s", [_session(0)])
    assert [r.seconds for r in plan] == [3600] * 6 + [1800]
    assert plan[0].start == _session(0)[0] and plan[-1].end == _session(0)[1]
    assert all(a.end == b.start for a, b in itertools.pairwise(plan))
    assert {r.duration for r in plan} == {"3600 S", "1800 S"}


def test_minutes_are_one_request_per_session_and_hours_merge_across_nights() -> None:
    week = [_session(d) for d in range(5)]
    assert len(plan_requests("AAPL", "1m", week)) == 5  # two sessions do not fit in 1 D
    (hours,) = plan_requests("AAPL", "1h", week)  # a week fits in 30 D
    assert (hours.start, hours.end) == (D + timedelta(hours=14), D + timedelta(days=4, hours=21))
    assert hours.duration == "5 D"
    # a gap that may not be asked for (it holds stored bars) splits the request
    split = plan_requests("AAPL", "1h", week, bridgeable=lambda lo, hi: lo.day != 9)
    assert len(split) == 2


def test_spans_are_aligned_to_bars_and_never_overlap() -> None:
    ragged = [(D + timedelta(minutes=1, seconds=7), D + timedelta(minutes=2, seconds=1)),
              (D + timedelta(minutes=2, seconds=30), D + timedelta(minutes=4))]  # fmt: skip
    plan = plan_requests("AAPL", "1m", ragged, bridgeable=lambda lo, hi: False)
    # [1:07, 2:01) and [2:30, 4:00) widen to [1:00, 3:00) and [2:00, 4:00): the overlap is
    # asked once, and touching requests need no gap to be bridged
    assert [(r.start.minute, r.end.minute) for r in plan] == [(1, 4)]
    daily = plan_requests("AAPL", "1d", [(D - timedelta(days=400), D)])
    assert [r.seconds // 86400 for r in daily] == [365, 35]


def test_values() -> None:
    assert [duration_text(s) for s in (30, 86_400, 86_401, 7 * 86_400)] == [
        "30 S", "86400 S", "2 D", "7 D",
    ]  # fmt: skip
    assert bar_size_setting("1 min") == "1 min" and bar_size_setting("1h") == "1 hour"
    with pytest.raises(ValueError, match="resolution '1s' cannot be fetched"):
        bar_size_setting("1s")
    assert classify_history_error("Historical data request pacing violation") == "pacing"
    assert classify_history_error("HMDS query returned no data: AAPL@SMART Trades") == "no_data"
    assert classify_history_error("No market data permissions for NYSE STK") == "refused"
