"""Tumbling, epoch-aligned event-time windows: the aggregation behind the resample operators.

Plain classes with no asyncio, so they can be driven and tested directly:

- ``OhlcWindows.add(symbol, ts, price, volume)`` folds one price event into its window.
- ``BarWindows.add(bar)`` folds one finer bar into its window (``5s`` -> ``1m``, ...).

Both return the bars that the event's watermark advance closed (usually none), or ``None``
when the event is *late*: its window was already emitted. Nothing is dropped silently; the
caller decides what to do with a late event (the async operators count it and hand it to
``on_late``).

Rules:

- A window is ``[start, start + width)`` with ``start`` a multiple of ``width`` seconds since
  the Unix epoch, so a ``1m`` window starts on the minute and a ``1d`` window at UTC midnight.
  (Daily bars per exchange session: ``mdp_core.session_windows.SessionWindows``.)
- Watermarks are per symbol: a symbol's watermark is the maximum event time seen for that
  symbol minus ``allowed_lateness``; it never regresses. A symbol's window closes when its
  watermark reaches the window's end, on ``flush()`` (end of stream, or the stream has
  been idle), or on ``advance()`` (a heartbeat for every symbol). One symbol's far-future
  event never makes another symbol's events late.
- A symbol's closed windows are a prefix of time: once one of its windows starting before
  ``T`` is closed, all of them are, and its events there are late.
- A symbol's bars come out in window order; bars closed together (by one event, a flush
  or an advance) come out in window order, then symbol order. The output is
  deterministic.
- Open is the price at the earliest event time in the window, close at the latest; equal
  times are broken by arrival order (first arrival opens, last arrival closes).
- A bar emitted by ``flush()`` before its symbol's events reached the window's end is
  ``partial`` (for ``BarWindows``: its last input bar ends before the window does): the
  stream stopped mid-window, and a store replaces it when the complete bar comes.
- ``folded`` counts the inputs folded into the bars emitted so far (the rest of the inputs
  seen, less the late ones, sit in open windows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from mdp_core.models import (
    _CLEAN_SYMBOLS,
    RESOLUTIONS,
    Bar,
    normalize_symbol,
    parse_resolution,
    resolution_seconds,
)

__all__ = ["BarWindows", "InvalidEvent", "OhlcWindows", "can_roll_up"]

_INF = math.inf
_NO_BARS: tuple[Bar, ...] = ()
_MIN_TIME = datetime.min.replace(tzinfo=UTC)  # before any event
_MAX_TIME = datetime.max.replace(tzinfo=UTC)  # after any event


def can_roll_up(finer: str, coarser: str) -> bool:
    """Whether bars of resolution ``finer`` roll up into ``coarser`` windows: they must be
    finer than the window and divide it (5s -> 1m, 1m -> 1h). Both are resolution labels."""
    fine, coarse = resolution_seconds(finer), resolution_seconds(coarser)
    return fine < coarse and coarse % fine == 0


class InvalidEvent(ValueError):
    """An input event that cannot be aggregated (bad price, volume, time or symbol).

    Raised by ``add`` before any state changes; the stream operators count such events as
    ``invalid`` and keep going.
    """


def as_lateness(value: timedelta | float) -> timedelta:
    """``allowed_lateness`` as a ``timedelta``; ``ValueError`` unless it is finite and >= 0."""
    if isinstance(value, timedelta):
        lateness = value
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        lateness = timedelta(seconds=value)
    else:
        raise ValueError(
            f"allowed_lateness {value!r} is invalid: expected a timedelta or seconds >= 0"
        )
    if lateness < timedelta(0):
        raise ValueError(f"allowed_lateness {value!r} is invalid: expected a duration >= 0")
    return lateness


def _epoch_seconds(ts: object) -> float:
    """Seconds since the epoch of an aware datetime, else ``InvalidEvent``."""
    if not isinstance(ts, datetime):
        raise InvalidEvent(
            f"event time {ts!r} is a {type(ts).__name__}: expected a timezone-aware datetime"
        )
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidEvent(
            f"event time {ts.isoformat()} is naive: expected a timezone-aware datetime"
        )
    return ts.timestamp()


class _Symbol:
    """One symbol's watermark and open windows.

    The hot path compares datetimes (cheap) rather than converting each event time to epoch
    seconds (expensive): ``[lo, hi)`` is the window of the symbol's previous event, with its
    state in ``state``; ``trigger`` is the event time at which the watermark reaches the
    end of the earliest window still open."""

    __slots__ = ("closed_through", "hi", "lo", "max_time", "open", "state", "trigger")

    def __init__(self) -> None:
        self.max_time = _MIN_TIME  # maximum event time seen
        self.trigger = _MIN_TIME  # a max event time reaching this closes a window
        self.closed_through = -_INF  # every window starting before this is closed
        self.open: dict[float, list] = {}  # window start (epoch seconds) -> state
        self.lo = self.hi = _MIN_TIME  # no event falls in [lo, hi)
        self.state: list = []


class _Windows:
    """Per-symbol watermarks, open windows and emission; subclasses define the state."""

    def __init__(self, window: timedelta | str, allowed_lateness: timedelta | float = 0.0) -> None:
        self.resolution: str = parse_resolution(window)
        self.width: float = float(RESOLUTIONS[self.resolution])
        self.lateness: timedelta = as_lateness(allowed_lateness)
        self._width = timedelta(seconds=self.width)
        self._symbols: dict[str, _Symbol] = {}
        self.folded = 0  # inputs folded into the bars emitted so far
        self.outside = 0  # inputs in no window (session windows only: between sessions)

    @property
    def watermark(self) -> datetime | None:
        """The highest symbol watermark (``None`` before any event). It never goes back."""
        latest = max((s.max_time for s in self._symbols.values()), default=_MIN_TIME)
        return None if latest is _MIN_TIME else latest - self.lateness

    def watermark_of(self, symbol: str) -> datetime | None:
        """``symbol``'s watermark (``None`` before its first event)."""
        s = self._symbols.get(symbol)
        return None if s is None or s.max_time is _MIN_TIME else s.max_time - self.lateness

    def closed_through_of(self, symbol: str) -> datetime | None:
        """Every window of ``symbol`` starting before this time was emitted (``None``: none
        yet)."""
        s = self._symbols.get(symbol)
        if s is None or s.closed_through == -_INF:
            return None
        return datetime.fromtimestamp(s.closed_through, UTC)

    @property
    def open_windows(self) -> int:
        """Number of (window, symbol) pairs holding data not emitted yet."""
        return sum(len(s.open) for s in self._symbols.values())

    def advance(self, event_time: datetime) -> list[Bar]:
        """Raise every symbol's watermark as if an event at ``event_time`` had arrived for it
        (a heartbeat); return the bars this closed. ``InvalidEvent`` unless ``event_time``
        is aware."""
        _epoch_seconds(event_time)
        closed: list[Bar] = []
        for symbol, s in self._symbols.items():
            if event_time > s.max_time:
                s.max_time = event_time
                if event_time >= s.trigger:
                    closed.extend(self._close_until(symbol, s, event_time))
        return _in_order(closed)

    def flush(self) -> list[Bar]:
        """Emit every open window (end of stream, or idle). Events that later fall in a
        flushed window of their symbol are late."""
        bars: list[Bar] = []
        for symbol, s in self._symbols.items():
            if s.open:
                # Open windows all start at or after closed_through: this only moves it on.
                self._set_closed_through(s, self._end_of(max(s.open)))
                bars.extend(self._emit(symbol, s, _INF, flushed=True))
        return _in_order(bars)

    def _symbol(self, symbol: str) -> _Symbol:
        """The state of a symbol seen for the first time (its name is checked)."""
        if symbol not in _CLEAN_SYMBOLS:  # known clean symbols skip the check
            self._check_symbol(symbol)
        s = self._symbols[symbol] = _Symbol()
        return s

    def _check_symbol(self, symbol: object) -> None:
        """The records' symbol rule, and already normalised: ``"aapl"`` and ``"AAPL"``
        would otherwise aggregate apart into bars of the same key."""
        try:
            clean = normalize_symbol(symbol)
            if clean != symbol:
                raise ValueError(f"symbol {symbol!r} is not normalised: expected {clean!r}")
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(str(exc)) from None

    def _close_until(self, symbol: str, s: _Symbol, max_time: datetime) -> list[Bar]:
        wm = (max_time - self.lateness).timestamp()
        self._set_closed_through(s, self._boundary(wm))  # windows ending at or before wm
        return self._emit(symbol, s, s.closed_through, flushed=False)

    def _set_closed_through(self, s: _Symbol, boundary: float) -> None:
        s.closed_through = boundary
        # The watermark reaching the end of the next window closes it.
        end = self._next_end(boundary)
        s.trigger = _MAX_TIME if end == _INF else datetime.fromtimestamp(end, UTC) + self.lateness

    # The shape of the windows (epoch-aligned tumbling here; sessions override these).

    def _boundary(self, wm: float) -> float:
        """The start of the first window not ended at ``wm`` (all before it have ended)."""
        return wm - wm % self.width

    def _end_of(self, start: float) -> float:
        """The end of the window starting at ``start``."""
        return start + self.width

    def _next_end(self, boundary: float) -> float:
        """The end of the first window starting at or after ``boundary`` (``inf``: none)."""
        return boundary + self.width

    def _locate(self, s: _Symbol, ts: datetime) -> list | None:
        """The open window of ``s`` holding ``ts`` (``[]`` when it is new: the caller fills
        it), or ``None`` if that window was closed (the event is late)."""
        t = _epoch_seconds(ts)
        start = t - t % self.width
        if start < s.closed_through:
            return None
        state = s.open.get(start)
        s.lo = datetime.fromtimestamp(start, UTC)
        s.hi = s.lo + self._width
        if state is None:
            state = s.open[start] = []
        s.state = state
        return state

    def _emit(self, symbol: str, s: _Symbol, before: float, *, flushed: bool) -> list[Bar]:
        s.lo = s.hi = _MIN_TIME
        bars: list[Bar] = []
        for start in sorted(w for w in s.open if w < before):
            state = s.open.pop(start)
            ts = datetime.fromtimestamp(start, UTC)
            bars.append(self._bar(symbol, ts, state, flushed and self._short(ts, state, s)))
            self.folded += state[-1]
        return bars

    def _short(self, start: datetime, state: list, s: _Symbol) -> bool:
        """Whether a flushed window's inputs stop before its end (the bar is partial)."""
        return s.max_time < start + self._width

    def _bar(self, symbol: str, ts: datetime, state: list, partial: bool) -> Bar:
        raise NotImplementedError


def _in_order(bars: list[Bar]) -> list[Bar]:
    """Window order, then symbol order."""
    bars.sort(key=lambda b: (b.ts, b.symbol))
    return bars


class OhlcWindows(_Windows):
    """OHLCV aggregation of price events into tumbling windows (see the module docstring).

    ``source`` is copied onto every bar. State per open (window, symbol):
    ``[open_time, open, high, low, close_time, close, volume, inputs]``.
    """

    def __init__(
        self,
        window: timedelta | str,
        allowed_lateness: timedelta | float = 0.0,
        *,
        source: str = "",
    ) -> None:
        super().__init__(window, allowed_lateness)
        if not isinstance(source, str):
            raise ValueError(f"source {source!r} is invalid: expected a str")
        self.source = source

    def add(
        self, symbol: str, ts: datetime, price: float | None, volume: float | None = 0.0
    ) -> Sequence[Bar] | None:
        """Fold one event into its window.

        Returns ``None`` if the event is late (its window was already emitted; nothing
        changed), else the bars closed by the watermark advance (usually empty).
        Raises ``InvalidEvent`` (a ``ValueError``) for a price that is not a finite
        number > 0, a volume that is not a finite number >= 0 (``None`` counts as 0), a
        time that is not a timezone-aware datetime, or a symbol that breaks the records'
        rule (``models.normalize_symbol``) or is not normalised; nothing changes then.
        """
        try:
            if price is None or not 0.0 < price < _INF:
                raise InvalidEvent(f"price {price!r} is invalid: expected a finite number > 0")
            if volume is None:
                volume = 0.0
            elif not 0.0 <= volume < _INF:
                raise InvalidEvent(f"volume {volume!r} is invalid: expected a finite number >= 0")
        except TypeError:
            raise InvalidEvent(
                f"price {price!r} or volume {volume!r} is invalid: expected finite numbers"
            ) from None
        s = self._symbols.get(symbol)
        try:
            if s is not None and s.lo <= ts < s.hi:  # the previous event's window: common
                state = s.state
            else:
                if s is None:
                    _epoch_seconds(ts)  # check the time before remembering the symbol
                    s = self._symbol(symbol)
                located = self._locate(s, ts)
                if located is None:
                    return None
                state = located
        except TypeError:  # not an aware datetime
            _epoch_seconds(ts)
            raise
        if not state:
            state.extend((ts, price, price, price, ts, price, volume, 1))
        else:
            if price > state[2]:
                state[2] = price
            elif price < state[3]:
                state[3] = price
            if ts >= state[4]:
                state[4] = ts
                state[5] = price
            elif ts < state[0]:
                state[0] = ts
                state[1] = price
            state[6] += volume
            state[7] += 1
        if ts > s.max_time:
            s.max_time = ts
            if ts >= s.trigger:
                return self._close_until(symbol, s, ts)
        return _NO_BARS

    def _bar(self, symbol: str, ts: datetime, state: list, partial: bool) -> Bar:
        return Bar(
            symbol,
            ts,
            state[1],
            state[2],
            state[3],
            state[5],
            state[6],
            self.resolution,
            source=self.source,
            partial=partial,
        )


class BarWindows(_Windows):
    """Roll finer bars up into coarser tumbling windows (``5s`` -> ``1m``, ``1m`` -> ``1h``).

    Per window and symbol: first open and last close by bar time (ties: arrival order),
    max high, min low, summed volume; ``vwap`` weighted by volume when every input bar has
    one and the volume is > 0 (else ``None``); ``trade_count`` summed when every input has
    one (else ``None``). ``source`` is the given one, or else the first input bar's.
    Each input's resolution must be finer than the window and divide it, else
    ``ValueError`` (a configuration error, not an ``InvalidEvent``).
    """

    def __init__(
        self,
        window: timedelta | str,
        allowed_lateness: timedelta | float = 0.0,
        *,
        source: str | None = None,
    ) -> None:
        super().__init__(window, allowed_lateness)
        if source is not None and not isinstance(source, str):
            raise ValueError(f"source {source!r} is invalid: expected a str or None")
        self.source = source
        self._ok_resolutions: set[str] = set()
        self._input_width: dict[str, timedelta] = {}

    def add(self, bar: Bar) -> Sequence[Bar] | None:
        """Fold one input bar into its window; returns like ``OhlcWindows.add``."""
        try:
            if bar.resolution not in self._ok_resolutions:
                self._check_resolution(bar)
        except AttributeError:
            raise TypeError(
                f"resample_bars: item {bar!r} is a {type(bar).__name__}: expected a Bar"
            ) from None
        ts, symbol = bar.ts, bar.symbol
        s = self._symbols.get(symbol)
        if s is not None and s.lo <= ts < s.hi:
            state = s.state
        else:
            if s is None:
                s = self._symbol(symbol)
            located = self._locate(s, ts)
            if located is None:
                return None
            state = located
        self._fold_into(state, bar, ts + self._input_width[bar.resolution])
        if ts > s.max_time:
            s.max_time = ts
            if ts >= s.trigger:
                return self._close_until(symbol, s, ts)
        return _NO_BARS

    def _fold_into(self, state: list, bar: Bar, end: datetime) -> None:
        """Fold ``bar`` (ending at ``end``) into a window's ``state`` (``[]``: a new one)."""
        ts = bar.ts
        vwap, volume, count = bar.vwap, bar.volume, bar.trade_count
        pv = None if vwap is None else vwap * volume
        if not state:
            state.extend(
                (ts, bar.open, bar.high, bar.low, ts, bar.close, volume, pv, count, bar.source,
                 end, 1)
            )  # fmt: skip
        else:
            if bar.high > state[2]:
                state[2] = bar.high
            if bar.low < state[3]:
                state[3] = bar.low
            if ts >= state[4]:
                state[4] = ts
                state[5] = bar.close
            elif ts < state[0]:
                state[0] = ts
                state[1] = bar.open
            state[6] += volume
            state[7] = None if pv is None or state[7] is None else state[7] + pv
            state[8] = None if count is None or state[8] is None else state[8] + count
            if end > state[10]:
                state[10] = end
            state[11] += 1

    def _short(self, start: datetime, state: list, s: _Symbol) -> bool:
        # the last input ends before the window does
        return state[10].timestamp() < self._end_of(start.timestamp())

    def _check_resolution(self, bar: Bar) -> None:
        if not can_roll_up(bar.resolution, self.resolution):
            raise ValueError(
                f"resample_bars: bar {bar.symbol} {bar.ts.isoformat()} has resolution "
                f"{bar.resolution!r}, which cannot be rolled up into {self.resolution!r} "
                "windows: input bars must be finer than the window and divide it "
                "(e.g. 5s -> 1m, 1m -> 1h)"
            )
        self._ok_resolutions.add(bar.resolution)
        self._input_width[bar.resolution] = timedelta(seconds=RESOLUTIONS[bar.resolution])

    def _bar(self, symbol: str, ts: datetime, state: list, partial: bool) -> Bar:
        volume, pv = state[6], state[7]
        vwap = pv / volume if pv is not None and volume > 0.0 else None
        return Bar(
            symbol,
            ts,
            state[1],
            state[2],
            state[3],
            state[5],
            volume,
            self.resolution,
            vwap=vwap,
            trade_count=state[8],
            source=state[9] if self.source is None else self.source,
            partial=partial,
        )
