"""SessionWindows: one daily bar per exchange session (XNYS here), driven by fake times.

No wall clock is involved: time is the bars' own and ``advance(now)``'s, so every case
below is a chosen instant. The calendar is the real ``exchange_calendars`` XNYS one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mdp_core.channel import Channel
from mdp_core.edge import OUTSIDE_SESSION, Edge
from mdp_core.logs import logger
from mdp_core.models import Bar
from mdp_core.pipeline import resume_points
from mdp_core.session_windows import SessionWindows
from mdp_core.streams import StreamSpec

MINUTE = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def minutes(start: datetime, end: datetime, symbol: str = "SPY") -> list[Bar]:
    """1-minute bars starting every minute in ``[start, end)``, with distinct prices."""
    bars = []
    t, i = start, 0
    while t < end:
        base = 100.0 + (i % 37) * 0.25 - (i % 11) * 0.5
        bars.append(Bar(symbol, t, base, base + 1.0 + i % 3, base - 1.0 - i % 5, base + 0.5,
                        float(100 + i), "1m"))  # fmt: skip
        t, i = t + MINUTE, i + 1
    return bars


def expected(bars: list[Bar], open_: datetime, close: datetime) -> tuple[object, ...]:
    inside = [b for b in bars if open_ <= b.ts < close]
    return (
        open_, inside[0].open, max(b.high for b in inside), min(b.low for b in inside),
        inside[-1].close, sum(b.volume for b in inside),
    )  # fmt: skip


def values(bar: Bar) -> tuple[object, ...]:
    return (bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume)


def feed(windows: SessionWindows, bars: list[Bar]) -> list[tuple[int, Bar]]:
    """Add ``bars`` in order; (index of the input that closed it, bar) per emitted bar."""
    out = []
    for i, bar in enumerate(bars):
        closed = windows.add(bar)
        assert closed is not None, f"{bar} was late"
        out.extend((i, b) for b in closed)
    return out


def test_a_normal_day_is_one_bar_from_the_open_to_the_close() -> None:
    # Wednesday 2024-11-27: 9:30-16:00 New York = 14:30-21:00 UTC
    bars = minutes(utc(2024, 11, 27, 13, 0), utc(2024, 11, 27, 22, 0))
    w = SessionWindows("XNYS")
    out = feed(w, bars)
    assert len(out) == 1
    index, bar = out[0]
    # emitted by the session's last minute (15:59 New York), which ends at the close
    assert bars[index].ts == utc(2024, 11, 27, 20, 59)
    assert values(bar) == expected(bars, utc(2024, 11, 27, 14, 30), utc(2024, 11, 27, 21))
    assert (bar.resolution, bar.partial) == ("1d", False)
    assert w.outside == 90 + 60  # 13:00-14:30 and 21:00-22:00
    assert w.folded == 390  # 6.5 hours of minutes
    assert w.folded + w.outside == len(bars) and w.open_windows == 0


def test_an_early_close_ends_the_bar_at_the_calendars_close() -> None:
    # Friday 2024-11-29, the day after Thanksgiving: NYSE closes at 13:00 New York (18:00 UTC)
    bars = minutes(utc(2024, 11, 29, 14, 0), utc(2024, 11, 29, 21, 0))
    w = SessionWindows("XNYS")
    out = feed(w, bars)
    [(index, bar)] = out
    assert bars[index].ts == utc(2024, 11, 29, 17, 59)
    assert values(bar) == expected(bars, utc(2024, 11, 29, 14, 30), utc(2024, 11, 29, 18))
    assert not bar.partial
    assert w.folded == 210  # 3.5 hours
    assert w.outside == 30 + 180  # before the open, and the regular hours after the early close


def test_bars_on_a_holiday_and_a_weekend_are_counted_outside_session() -> None:
    w = SessionWindows("XNYS")
    thanksgiving = minutes(utc(2024, 11, 28, 15, 0), utc(2024, 11, 28, 16, 0))
    saturday = minutes(utc(2024, 11, 30, 15, 0), utc(2024, 11, 30, 15, 10))
    assert feed(w, thanksgiving + saturday) == []
    assert w.outside == 70 and w.folded == 0 and w.open_windows == 0
    assert w.flush() == []  # nothing was folded anywhere


def test_the_day_before_a_holiday_is_emitted_by_the_next_sessions_bars() -> None:
    """A session whose last minute is missing closes when a later bar arrives (here the
    next session's first minute, two days later), not before."""
    w = SessionWindows("XNYS")
    wednesday = minutes(utc(2024, 11, 27, 14, 30), utc(2024, 11, 27, 20, 30))  # ends early
    friday = minutes(utc(2024, 11, 29, 14, 30), utc(2024, 11, 29, 14, 32))
    assert feed(w, wednesday) == []
    out = feed(w, friday)
    assert [(i, b.ts) for i, b in out] == [(0, utc(2024, 11, 27, 14, 30))]
    assert not out[0][1].partial  # the watermark passed its close: complete as far as known


def test_advance_closes_a_session_when_the_fake_clock_reaches_its_close() -> None:
    w = SessionWindows("XNYS")
    feed(w, minutes(utc(2024, 11, 27, 14, 30), utc(2024, 11, 27, 15, 0)))
    assert w.advance(utc(2024, 11, 27, 20, 59, 59)) == []
    [bar] = w.advance(utc(2024, 11, 27, 21, 0))
    assert bar.ts == utc(2024, 11, 27, 14, 30) and w.open_windows == 0


def test_a_flush_mid_session_is_partial_and_later_bars_of_it_are_late() -> None:
    w = SessionWindows("XNYS")
    morning = minutes(utc(2024, 11, 27, 14, 30), utc(2024, 11, 27, 16, 0))
    feed(w, morning)
    [bar] = w.flush()
    assert bar.partial and values(bar) == expected(
        morning, utc(2024, 11, 27, 14, 30), utc(2024, 11, 27, 21)
    )
    late = minutes(utc(2024, 11, 27, 16, 0), utc(2024, 11, 27, 16, 1))[0]
    assert w.add(late) is None  # its session's bar was emitted
    assert w.outside == 0


def test_a_session_whose_first_minutes_are_missing_is_partial() -> None:
    """A stream that started after the open (and could not backfill to it) writes a bar
    flagged partial, even though it ran to the close."""
    w = SessionWindows("XNYS")
    afternoon = minutes(utc(2024, 11, 27, 19, 0), utc(2024, 11, 27, 21, 0))
    [(_, bar)] = feed(w, afternoon)
    assert bar.partial and bar.ts == utc(2024, 11, 27, 14, 30)


def test_symbols_keep_their_own_sessions_open() -> None:
    w = SessionWindows("XNYS")
    spy = minutes(utc(2024, 11, 27, 20, 58), utc(2024, 11, 27, 21, 0), "SPY")
    qqq = minutes(utc(2024, 11, 27, 20, 0), utc(2024, 11, 27, 20, 2), "QQQ")
    out = feed(w, qqq + spy)
    assert [b.symbol for _, b in out] == ["SPY"]
    assert [b.symbol for b in w.flush()] == ["QQQ"]


def test_a_bar_beyond_the_calendars_range_is_outside_session_with_a_warning() -> None:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    try:
        w = SessionWindows("XNYS")
        first, _ = w.sessions.bounds
        old = minutes(first - timedelta(days=400), first - timedelta(days=400) + 2 * MINUTE)
        assert feed(w, old) == []
    finally:
        logger.remove(sink)
    assert w.outside == 2 and w.folded == 0
    assert len(messages) == 1 and "beyond the calendar's range" in messages[0]


def test_input_bars_must_divide_a_minute() -> None:
    w = SessionWindows("XNYS")
    bar = Bar("SPY", utc(2024, 11, 27, 14, 30), 1.0, 1.0, 1.0, 1.0, 1.0, "5m")
    with pytest.raises(ValueError, match=r"cannot be made from '5m' bars: expected input bars"):
        w.add(bar)


def test_an_unknown_calendar_names_itself_and_how_to_list_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown market calendar 'NYSEX'.*get_calendar_names"):
        SessionWindows("NYSEX")


def test_the_edge_counts_bars_outside_sessions_by_name() -> None:
    """received == delivered + resampled + outside_session once closed (nothing folding)."""
    channel: Channel[Bar] = Channel(100)
    edge: Edge[Bar] = Edge(channel, resolution="1d", sessions="XNYS", name="t")
    bars = minutes(utc(2024, 11, 29, 14, 0), utc(2024, 11, 29, 18, 30))
    for bar in bars:
        edge.emit(bar)
    assert edge.folding == 0  # the early close closed the session
    edge.close()
    assert edge.dropped[OUTSIDE_SESSION] == 30 + 30
    assert edge.received == len(bars) == channel.stats().accepted + sum(edge.dropped.values())
    # one bar delivered for the 210 session minutes: it stands for them (209 more)
    assert channel.stats().accepted == 1 and edge.dropped["resampled"] == 209


def session_spec(**extra: object) -> StreamSpec:
    fields = {"symbols": ["SPY"]} | extra
    return StreamSpec(name="s", mode="bars", resolution="1d", **fields)  # type: ignore[arg-type]


def test_resume_points_start_at_the_next_sessions_open() -> None:
    spec = session_spec(sessions="XNYS")
    last = {"SPY": utc(2024, 11, 27, 14, 30)}  # Wednesday's bar is stored complete
    # Restarted mid-session on Friday: Friday is rebuilt from its open (Thursday is a holiday)
    assert resume_points(spec, last, utc(2024, 11, 29, 16)) == {
        "SPY": utc(2024, 11, 29, 14, 29, 55)
    }
    # Restarted before Friday's open: nothing was missed
    assert resume_points(spec, last, utc(2024, 11, 29, 14)) == {}


def test_a_symbol_without_a_complete_bar_starts_from_the_open_in_progress() -> None:
    spec = session_spec(sessions="XNYS", symbols=["SPY", "QQQ"])
    last = {"SPY": utc(2024, 11, 27, 14, 30)}
    assert resume_points(spec, last, utc(2024, 11, 29, 17)) == {
        "SPY": utc(2024, 11, 29, 14, 29, 55),
        "QQQ": utc(2024, 11, 29, 14, 29, 55),
    }
    # after the early close (18:00 UTC) no session is in progress: QQQ has nothing to resume
    assert resume_points(spec, last, utc(2024, 11, 29, 19)) == {
        "SPY": utc(2024, 11, 29, 14, 29, 55)
    }


def test_resume_points_of_utc_days_are_unchanged() -> None:
    last = {"SPY": utc(2024, 11, 27)}
    assert resume_points(session_spec(), last, utc(2024, 11, 29)) == {
        "SPY": utc(2024, 11, 27, 23, 59, 55)
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sessions": "XNYS", "resolution": "1h"},
         r"sessions 'XNYS' is set with mode 'bars' and resolution '1h': expected mode 'bars' "
         r"and resolution '1d'"),
        ({"sessions": "XNYS", "mode": "quotes"}, r"with mode 'quotes'.*expected mode 'bars'"),
        ({"sessions": "XNYZ"}, r"unknown market calendar 'XNYZ'.*get_calendar_names"),
        ({"provider_options": {"sessions": "XNYS"}},
         r"sessions cannot be a provider option"),
    ],
)  # fmt: skip
def test_bad_session_configs_are_refused_with_the_value(
    extra: dict[str, object], message: str
) -> None:
    fields = {"resolution": "1d"} | extra
    with pytest.raises(ValueError, match=message):
        StreamSpec(name="s", mode=fields.pop("mode", "bars"), symbols=["SPY"], **fields)  # type: ignore[arg-type]
