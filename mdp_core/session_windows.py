"""Daily bars that follow an exchange's sessions instead of UTC days: ``SessionWindows``.

``SessionWindows(calendar)`` rolls finer bars (``1m`` or finer) up into one ``1d`` bar per
session of an ``exchange_calendars`` calendar (``"XNYS"``, ``"XLON"``, ...), like
``BarWindows`` does for UTC days, with the same per-symbol watermarks, ``flush``,
``advance``, ``partial`` and ``folded`` (see ``mdp_core.windows``). The differences:

- A bar covers ``[session open, session close)`` of one exchange day; its ``ts`` is the
  session open (UTC). Early closes (e.g. 13:00 New York time the day after Thanksgiving)
  and holidays are the calendar's. An input bar belongs to the session holding its start.
- An input bar outside every session (pre-/post-market, a weekend, a holiday, a time
  beyond the calendar's range) is in no window: ``add`` counts it in ``outside`` and folds
  it nowhere. It still moves its symbol's watermark, so a post-market bar closes the day.
- A symbol's watermark is the latest *end* of its input bars (``ts`` + the input's
  resolution) less ``allowed_lateness``: the session's last minute closes its bar at once,
  without waiting for the next bar (which may come the next morning).
- A bar is ``partial`` when its inputs do not cover the whole session as far as can be
  told: flushed before its last input reached the close (the stream stopped), or its first
  input starts after the open (the stream started late, and its backfill did not reach
  the open). A store replaces a partial bar by the first complete one of its key.

No wall clock is read: time comes only from the bars and from ``advance(now)``, so the
caller (a test, a heartbeat) decides what "now" is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from mdp_core.calendars import Sessions, sessions_of
from mdp_core.logs import logger
from mdp_core.models import RESOLUTIONS, Bar
from mdp_core.windows import _NO_BARS, BarWindows, _epoch_seconds, _Symbol

__all__ = ["SESSION_RESOLUTION", "SessionWindows", "check_session_input"]

#: The resolution label of session bars (they are daily bars).
SESSION_RESOLUTION = "1d"


def check_session_input(resolution: str, calendar: str) -> None:
    """``ValueError`` unless bars of ``resolution`` can be folded into sessions: they must
    divide a minute (sessions open and close on the minute)."""
    seconds = RESOLUTIONS.get(resolution)
    if seconds is None or 60 % seconds != 0:
        raise ValueError(
            f"session bars ({calendar}) cannot be made from {resolution!r} bars: expected "
            "input bars of 1m or finer that divide a minute (1s, 5s, 10s, 15s, 30s, 1m)"
        )


class SessionWindows(BarWindows):
    """Roll bars up into one daily bar per exchange session (see the module docstring).

    ``calendar``: an ``exchange_calendars`` name (``ValueError`` naming it if unknown) or a
    ``Sessions`` table. ``allowed_lateness`` and ``source`` are as for ``BarWindows``."""

    def __init__(
        self,
        calendar: str | Sessions,
        allowed_lateness: timedelta | float = 0.0,
        *,
        source: str | None = None,
    ) -> None:
        super().__init__(SESSION_RESOLUTION, allowed_lateness, source=source)
        self.sessions = sessions_of(calendar) if isinstance(calendar, str) else calendar
        self._warned_bounds = False

    def add(self, bar: Bar) -> Sequence[Bar] | None:
        """Fold one input bar into its session; returns like ``BarWindows.add`` (``None``:
        late). A bar outside every session is counted in ``outside`` and returns the bars
        its watermark advance closed."""
        try:
            if bar.resolution not in self._ok_resolutions:
                self._check_resolution(bar)
        except AttributeError:
            raise TypeError(
                f"session bars: item {bar!r} is a {type(bar).__name__}: expected a Bar"
            ) from None
        ts, symbol = bar.ts, bar.symbol
        end = ts + self._input_width[bar.resolution]
        s = self._symbols.get(symbol)
        if s is not None and s.lo <= ts < s.hi:  # the previous bar's session: common
            state = s.state
        else:
            if s is None:
                s = self._symbol(symbol)
            session = self.sessions.of(_epoch_seconds(ts))
            if session is None:
                self._outside(ts)
                return self._watermark(symbol, s, end)
            start, close = session
            if start < s.closed_through:
                return None  # late: the session's bar was emitted
            s.lo = datetime.fromtimestamp(start, UTC)
            s.hi = datetime.fromtimestamp(close, UTC)
            state = s.open.setdefault(start, [])
            s.state = state
        self._fold_into(state, bar, end)
        return self._watermark(symbol, s, end)

    def _watermark(self, symbol: str, s: _Symbol, end: datetime) -> Sequence[Bar]:
        if end > s.max_time:
            s.max_time = end
            if end >= s.trigger:
                return self._close_until(symbol, s, end)
        return _NO_BARS

    def _outside(self, ts: datetime) -> None:
        self.outside += 1
        first, last = self.sessions.bounds
        if not first <= ts < last and not self._warned_bounds:
            self._warned_bounds = True
            logger.warning(
                "session bars ({}): bar at {} is beyond the calendar's range {} .. {}: "
                "counted as outside_session",
                self.sessions.name, ts.isoformat(), first.isoformat(), last.isoformat(),
            )  # fmt: skip

    def _bar(self, symbol: str, ts: datetime, state: list, partial: bool) -> Bar:
        # state[0]: the first input's start; ts: the session's open
        return super()._bar(symbol, ts, state, partial or state[0] > ts)

    def _check_resolution(self, bar: Bar) -> None:
        check_session_input(bar.resolution, self.sessions.name)
        self._ok_resolutions.add(bar.resolution)
        self._input_width[bar.resolution] = timedelta(seconds=RESOLUTIONS[bar.resolution])

    def _boundary(self, wm: float) -> float:
        return self.sessions.first_open_ending_after(wm)

    def _end_of(self, start: float) -> float:
        return self.sessions.close_of[start]

    def _next_end(self, boundary: float) -> float:
        return self.sessions.close_from(boundary)
