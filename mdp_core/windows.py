"""Tumbling, epoch-aligned event-time windows: the aggregation behind the resample operators.

Plain classes with no asyncio, so they can be driven and tested directly:

- ``OhlcWindows.add(symbol, ts, price, volume)`` folds one price event into its window.
- ``BarWindows.add(bar)`` folds one finer bar into its window (``5s`` -> ``1m``, ...).

Both return the bars that the event's watermark advance closed (usually none), or ``None``
when the event is *late*: its window was already emitted. Nothing is dropped silently; the
caller decides what to do with a late event (the async operators count it and hand it to
``on_late``).

Rules (DESIGN.md section 3):

- A window is ``[start, start + width)`` with ``start`` a multiple of ``width`` seconds since
  the Unix epoch, so a ``1m`` window starts on the minute and a ``1d`` window at UTC midnight.
- The watermark is the maximum event time seen (across all symbols) minus
  ``allowed_lateness``. It never regresses. A window closes when the watermark reaches its
  end, on ``flush()`` (end of stream, or the stream has been idle), or on ``advance()``.
- Closed windows are a prefix of time: once any window starting before ``T`` is closed, every
  window starting before ``T`` is. An event in such a window is late, whether or not its
  symbol had a bar there.
- Bars come out in window order, then symbol order, so the output is deterministic.
- Open is the price at the earliest event time in the window, close at the latest; equal
  times are broken by arrival order (first arrival opens, last arrival closes).
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


class _Windows:
    """Watermark, open windows and emission; subclasses define the per-symbol state.

    The hot path compares datetimes (cheap) rather than converting each event time to epoch
    seconds (expensive): ``[_lo, _hi)`` is the window of the previous event, and the
    watermark is tracked as the maximum event time, compared with ``_trigger`` (the event
    time at which the watermark reaches the end of the earliest window still open).
    """

    def __init__(self, window: timedelta | str, allowed_lateness: timedelta | float = 0.0) -> None:
        self.resolution: str = parse_resolution(window)
        self.width: float = float(RESOLUTIONS[self.resolution])
        self.lateness: timedelta = as_lateness(allowed_lateness)
        self._width = timedelta(seconds=self.width)
        self._max_time = _MIN_TIME  # maximum event time seen
        self._trigger = _MIN_TIME  # a max event time reaching this closes a window
        self._closed_through = -_INF  # every window starting before this is closed
        # window start (epoch seconds) -> symbol -> mutable aggregation state
        self._open: dict[float, dict[str, list]] = {}
        self._lo: datetime  # [_lo, _hi) is the window of the previous event, with its
        self._hi: datetime  # per-symbol states in _states
        self._states: dict[str, list]
        self._forget_window()

    @property
    def watermark(self) -> datetime | None:
        """Max event time seen minus the allowed lateness (``None`` before any event). It never
        goes back."""
        return None if self._max_time is _MIN_TIME else self._max_time - self.lateness

    @property
    def closed_through(self) -> datetime | None:
        """Every window starting before this time has been emitted (``None``: none yet)."""
        if self._closed_through == -_INF:
            return None
        return datetime.fromtimestamp(self._closed_through, UTC)

    @property
    def open_windows(self) -> int:
        """Number of windows holding data that has not been emitted yet."""
        return len(self._open)

    def advance(self, event_time: datetime) -> list[Bar]:
        """Raise the watermark as if an event at ``event_time`` had arrived (a heartbeat);
        return the bars this closed. ``InvalidEvent`` unless ``event_time`` is aware."""
        _epoch_seconds(event_time)
        if event_time > self._max_time:
            self._max_time = event_time
            if event_time >= self._trigger:
                return self._close_until(event_time)
        return []

    def flush(self) -> list[Bar]:
        """Emit every open window (end of stream, or idle). Events that later fall in an
        emitted window are late."""
        if not self._open:
            return []
        # Open windows all start at or after _closed_through, so this only moves it forward.
        self._set_closed_through(max(self._open) + self.width)
        return self._emit(_INF)

    def _close_until(self, max_time: datetime) -> list[Bar]:
        wm = (max_time - self.lateness).timestamp()
        self._set_closed_through(wm - wm % self.width)  # windows ending at or before wm
        return self._emit(self._closed_through)

    def _set_closed_through(self, boundary: float) -> None:
        self._closed_through = boundary
        # The watermark reaching boundary + width closes the next window.
        next_end = datetime.fromtimestamp(boundary + self.width, UTC)
        self._trigger = next_end + self.lateness

    def _window_for(self, ts: datetime) -> dict[str, list] | None:
        """The open window holding ``ts`` (created if needed), or ``None`` if it was closed."""
        t = _epoch_seconds(ts)
        start = t - t % self.width
        if start < self._closed_through:
            return None
        states = self._open.get(start)
        if states is None:
            states = self._open[start] = {}
        self._lo = datetime.fromtimestamp(start, UTC)
        self._hi = self._lo + self._width
        self._states = states
        return states

    def _forget_window(self) -> None:
        self._lo = self._hi = _MIN_TIME  # no event falls in [_lo, _hi)
        self._states = {}

    def _emit(self, before: float) -> list[Bar]:
        self._forget_window()
        bars: list[Bar] = []
        make = self._bar
        for start in sorted(s for s in self._open if s < before):
            states = self._open.pop(start)
            ts = datetime.fromtimestamp(start, UTC)
            for symbol in sorted(states):
                bars.append(make(symbol, ts, states[symbol]))
        return bars

    def _discard_empty(self) -> None:
        for start in [s for s, states in self._open.items() if not states]:
            del self._open[start]
        self._forget_window()

    def _bar(self, symbol: str, ts: datetime, state: list) -> Bar:
        raise NotImplementedError


class OhlcWindows(_Windows):
    """OHLCV aggregation of price events into tumbling windows (see the module docstring).

    ``source`` is copied onto every bar. State per open (window, symbol):
    ``[open_time, open, high, low, close_time, close, volume]``.
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
        try:
            if self._lo <= ts < self._hi:  # the previous event's window: the common case
                states = self._states
            else:
                located = self._window_for(ts)
                if located is None:
                    return None
                states = located
        except TypeError:  # not an aware datetime
            _epoch_seconds(ts)
            raise
        state = states.get(symbol)
        if state is None:
            if symbol not in _CLEAN_SYMBOLS:  # known clean symbols skip the check
                self._check_symbol(symbol)
            states[symbol] = [ts, price, price, price, ts, price, volume]
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
        if ts > self._max_time:
            self._max_time = ts
            if ts >= self._trigger:
                return self._close_until(ts)
        return _NO_BARS

    def _check_symbol(self, symbol: object) -> None:
        """The records' symbol rule, and already normalised: ``"aapl"`` and ``"AAPL"``
        would otherwise aggregate apart into bars of the same key."""
        try:
            clean = normalize_symbol(symbol)
            if clean != symbol:
                raise ValueError(f"symbol {symbol!r} is not normalised: expected {clean!r}")
        except (TypeError, ValueError) as exc:
            self._discard_empty()  # the window may have been created for this event
            raise InvalidEvent(str(exc)) from None

    def _bar(self, symbol: str, ts: datetime, state: list) -> Bar:
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

    def add(self, bar: Bar) -> Sequence[Bar] | None:
        """Fold one input bar into its window; returns like ``OhlcWindows.add``."""
        try:
            if bar.resolution not in self._ok_resolutions:
                self._check_resolution(bar)
        except AttributeError:
            raise TypeError(
                f"resample_bars: item {bar!r} is a {type(bar).__name__}: expected a Bar"
            ) from None
        ts = bar.ts
        if self._lo <= ts < self._hi:
            states = self._states
        else:
            located = self._window_for(ts)
            if located is None:
                return None
            states = located
        vwap, volume, count = bar.vwap, bar.volume, bar.trade_count
        pv = None if vwap is None else vwap * volume
        state = states.get(bar.symbol)
        if state is None:
            states[bar.symbol] = [
                ts, bar.open, bar.high, bar.low, ts, bar.close, volume, pv, count, bar.source,
            ]  # fmt: skip
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
        if ts > self._max_time:
            self._max_time = ts
            if ts >= self._trigger:
                return self._close_until(ts)
        return _NO_BARS

    def _check_resolution(self, bar: Bar) -> None:
        if not can_roll_up(bar.resolution, self.resolution):
            raise ValueError(
                f"resample_bars: bar {bar.symbol} {bar.ts.isoformat()} has resolution "
                f"{bar.resolution!r}, which cannot be rolled up into {self.resolution!r} "
                "windows: input bars must be finer than the window and divide it "
                "(e.g. 5s -> 1m, 1m -> 1h)"
            )
        self._ok_resolutions.add(bar.resolution)

    def _bar(self, symbol: str, ts: datetime, state: list) -> Bar:
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
        )
