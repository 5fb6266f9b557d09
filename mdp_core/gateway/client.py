"""``ClientState``: one connected client as the request handlers and the data pump see it.

Its client id, the market data type it asked for, its subscriptions (``TickSub`` for
reqMktData, ``BarSub`` for reqRealTimeBars, ``HistorySub`` for keepUpToDate historical
requests) and, on every pump, the ticks, real-time bars and historical updates that became
due for them. What it writes is recorded and counted in the gateway's ``GatewayState``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter

from mdp_core.gateway.history import format_bar_date
from mdp_core.gateway.instruments import Instrument
from mdp_core.gateway.market import BAR_SECONDS, SimBar, SimTick, aggregate_bars
from mdp_core.gateway.protocol import historical_update, realtime_bar, tick_frames
from mdp_core.gateway.records import SentBar, SentTick
from mdp_core.gateway.state import GatewayState

__all__ = ["BarSub", "ClientState", "HistorySub", "TickSub"]


def _tick_time(tick: SimTick) -> float:
    return tick.time


_BY_TIME = itemgetter(0)


@dataclass(eq=False)
class TickSub:
    """A market-data subscription and where it stands in its model's ticks.

    The next tick to send is ``pending[pos]``, ``pending`` being the ticks of the 5-second
    slot starting at ``slot``; ``next_time`` is that tick's time, or the slot's end once
    ``pending`` is used up (a lower bound for the next tick). A pump thus costs one
    comparison for a subscription with nothing due. ``last_sent`` is the tick sent before
    (None: nothing yet), against which the next quote is diffed; ``stats`` the symbol's
    counters.
    """

    req_id: int
    inst: Instrument
    delayed: bool
    rt_volume: bool
    stats: Counter[str]
    trades: bool = True  # False: quotes only (FX)
    volume: float = 0.0
    notional: float = 0.0
    last_sent: SimTick | None = None
    slot: int = 0
    pending: tuple[SimTick, ...] = ()
    pos: int = 0
    next_time: float = 0.0

    def seek(self, at: float) -> None:
        """Make the first tick with time >= ``at`` the next one to send."""
        self.slot = int(at // BAR_SECONDS) * BAR_SECONDS
        self.pending = self.inst.model.ticks(self.slot)
        self.pos = bisect_left(self.pending, at, key=_tick_time)
        self.next_time = (
            self.pending[self.pos].time if self.pos < len(self.pending) else self.slot + BAR_SECONDS
        )

    def take(self, now: float, out: list[tuple[float, TickSub, SimTick]]) -> None:
        """Append ``(time, self, tick)`` for each tick not sent yet with time < ``now``."""
        while self.next_time < now:
            pending, pos, n = self.pending, self.pos, len(self.pending)
            if pos < n:  # the due ticks of this slot
                while pos < n and (tick := pending[pos]).time < now:
                    out.append((tick.time, self, tick))
                    pos += 1
                self.pos = pos
                self.next_time = pending[pos].time if pos < n else self.slot + BAR_SECONDS
            else:  # this slot is used up and the next one has begun
                self.slot += BAR_SECONDS
                self.pending, self.pos = self.inst.model.ticks(self.slot), 0
                self.next_time = self.pending[0].time if self.pending else self.slot + BAR_SECONDS


@dataclass(eq=False)
class BarSub:
    """A real-time bars subscription."""

    req_id: int
    inst: Instrument
    what_to_show: str
    cursor: int  # start of the next bar to send


@dataclass(eq=False)
class HistorySub:
    """A keepUpToDate historical request: the bar of ``window`` is updated as it grows."""

    req_id: int
    inst: Instrument
    seconds: int
    what_to_show: str
    format_date: int
    window: int  # start of the window being updated
    done_until: int  # 5-second bars before this are folded into `complete`
    complete: SimBar | None = None
    last_sent: SimBar | None = None


class ClientState:
    """One client of a session: its id (once it started the API), its market data type,
    its subscriptions by request id, and what each pump owes them."""

    def __init__(self, state: GatewayState, peer: str) -> None:
        self.state = state
        self.peer = peer
        self.client_id: int | None = None
        self.market_data_type = 1
        self.next_order_id = 1
        self.ticks: dict[int, TickSub] = {}
        self.bars: dict[int, BarSub] = {}
        self.history: dict[int, HistorySub] = {}

    def __str__(self) -> str:
        who = f"client {self.client_id}" if self.client_id is not None else "new client"
        return f"{who} ({self.peer})"

    def lines_used(self) -> int:
        """Market-data lines in use: market data and real-time bars subscriptions."""
        return len(self.ticks) + len(self.bars)

    def clear(self) -> None:
        """Drop every subscription."""
        self.ticks.clear()
        self.bars.clear()
        self.history.clear()

    def tick_burst(self, sub: TickSub, tick: SimTick) -> list[bytes]:
        """The messages of ``tick`` for ``sub``, counted and recorded as sent."""
        sub.volume += tick.last_size
        sub.notional += tick.last * tick.last_size
        frames = tick_frames(
            sub.req_id, tick, sub.volume, sub.notional / sub.volume, sub.delayed, sub.rt_volume,
            sub.last_sent, sub.trades,
        )  # fmt: skip
        sub.last_sent = tick
        stats = sub.stats
        stats["ticks"] += 1
        stats["tick_messages"] += len(frames)
        self.state.sent_ticks.append(SentTick(self.client_id or 0, sub.req_id, tick, sub.delayed))
        return frames

    def pump(self, now: float, skip: bool) -> list[bytes]:
        """What happened since the last pump up to ``now``; ``skip`` drops it instead.

        Ticks of all subscriptions go out merged in time order (ties in subscription
        order), as TWS sends events as they happen: consecutive messages are mostly for
        different symbols, so a client read holds a little of many symbols.
        """
        frames = self._ticks(now, skip)
        frames += self._realtime_bars(now, skip)
        for hist in self.history.values():
            frames.extend(self._history_updates(hist, now, skip))
        return frames

    def _ticks(self, now: float, skip: bool) -> list[bytes]:
        frames: list[bytes] = []
        if skip:
            for sub in self.ticks.values():
                sub.seek(now)
            return frames
        due: list[tuple[float, TickSub, SimTick]] = []
        for sub in self.ticks.values():
            if sub.next_time < now:
                sub.take(now, due)
        due.sort(key=_BY_TIME)  # stable: ties keep subscription order
        for _, sub, tick in due:
            frames += self.tick_burst(sub, tick)
        return frames

    def _realtime_bars(self, now: float, skip: bool) -> list[bytes]:
        frames: list[bytes] = []
        current = int(now // BAR_SECONDS) * BAR_SECONDS
        for bar_sub in self.bars.values():
            if skip:
                bar_sub.cursor = max(bar_sub.cursor, current)
            while bar_sub.cursor + BAR_SECONDS <= now:
                bar = bar_sub.inst.model.bar(bar_sub.cursor, bar_sub.what_to_show)
                bar_sub.cursor += BAR_SECONDS
                if bar is not None:
                    frames.append(realtime_bar(bar_sub.req_id, bar))
                    self.state.symbol_stats[bar.symbol]["bars"] += 1
                    self.state.sent_bars.append(
                        SentBar(self.client_id or 0, bar_sub.req_id, bar, "realtime")
                    )
        return frames

    def _history_updates(self, sub: HistorySub, now: float, skip: bool) -> list[bytes]:
        model, seconds = sub.inst.model, sub.seconds
        window = int(now // seconds) * seconds
        if skip:
            sub.window = sub.done_until = window
            sub.complete = sub.last_sent = None
            return []
        frames = []
        while sub.window <= window:
            end = sub.window + seconds
            while sub.done_until + BAR_SECONDS <= min(now, end):
                bar = model.bar(sub.done_until, sub.what_to_show)
                sub.done_until += BAR_SECONDS
                if bar is not None:
                    parts = [sub.complete, bar] if sub.complete else [bar]
                    sub.complete = aggregate_bars(parts, sub.window, seconds)
            partial = (
                model.partial_bar(sub.done_until, now, sub.what_to_show)
                if sub.done_until < end
                else None
            )
            parts2 = [b for b in (sub.complete, partial) if b is not None]
            current = aggregate_bars(parts2, sub.window, seconds) if parts2 else None
            if current is not None and current != sub.last_sent:
                sub.last_sent = current
                date = format_bar_date(sub.window, seconds, sub.format_date)
                frames.append(historical_update(sub.req_id, current, date))
                self.state.symbol_stats[current.symbol]["history_updates"] += 1
                self.state.sent_bars.append(
                    SentBar(self.client_id or 0, sub.req_id, current, "update")
                )
            if sub.window == window:
                break
            sub.window = sub.done_until = end
            sub.complete = sub.last_sent = None
        return frames
