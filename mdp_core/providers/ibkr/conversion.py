"""ib_async's callbacks -> records: ticker updates become ``Quote``s, real-time bar
updates become ``Bar``s, each counted as received at the stream's edge.

Guarantees (the hot path: this runs for every TCP read):
- quotes: one ``Quote`` per ticker update that changed bid/ask/last or a size (IB's empty
  ``-1`` and ``NaN`` become ``None``); per symbol ``ts`` strictly increases (``+1 µs`` when
  two updates share a clock reading), so ``(symbol, ts)`` keys never collide;
- bars: one ``Bar`` per (symbol, start); anything at or before the last delivered start
  is dropped as ``duplicate`` (counted); while a backfill runs, live bars are held (the
  subscriptions part releases them in time order);
- an update that cannot become a record is dropped as ``invalid`` (counted, warned about
  at most every 10 s); the rest keeps flowing;
- a full channel pauses the socket (``FlowControl``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from mdp_core.models import Bar, Quote
from mdp_core.providers.ibkr.records import SymbolState, bar_from_realtime
from mdp_core.providers.ibkr.state import ClientState

__all__ = ["Conversion"]

_ONE_US = timedelta(microseconds=1)
_INF = math.inf


class Conversion:
    """``on_tickers`` and ``on_bar_update`` are ib_async's ``pendingTickersEvent`` and
    ``barUpdateEvent`` handlers; ``pause()`` is called when the channel is full."""

    def __init__(self, state: ClientState, pause: Callable[[], None]) -> None:
        self._st = state
        self._pause = pause

    def on_tickers(self, tickers: Iterable[Any]) -> None:
        """One Quote per updated ticker (see the module docstring)."""
        st = self._st
        by_sub = st.by_subscription
        now = st.clock.now()
        source = st.options.source
        edge = st.edge
        assert edge is not None
        emit = edge.emit
        room = True
        for ticker in tickers:
            state = by_sub.get(id(ticker))
            if state is None:
                continue  # someone else's ticker on a shared IB
            state.updated = now
            b, a, lp = ticker.bid, ticker.ask, ticker.last
            bs, az, ls = ticker.bidSize, ticker.askSize, ticker.lastSize
            values = (
                b if 0.0 < b < _INF else None,
                a if 0.0 < a < _INF else None,
                lp if 0.0 < lp < _INF else None,
                bs if 0.0 <= bs < _INF else None,
                az if 0.0 <= az < _INF else None,
                ls if 0.0 <= ls < _INF else None,
            )
            if values == state.last_values:
                continue  # volume / timestamp only: no new quote
            try:
                ts = ticker.time
                last_ts = state.last_ts
                if last_ts is not None and ts <= last_ts:
                    ts = last_ts + _ONE_US
                quote = Quote(state.symbol, ts, values[0], values[1], values[3], values[4],
                              values[2], values[5], source)  # fmt: skip
            except (TypeError, ValueError) as exc:
                edge.receive()
                st.invalid(state.symbol, exc)
                continue
            state.last_ts = ts
            state.last_values = values
            room = emit(quote) and room
        if not room:
            self._pause()

    def on_bar_update(self, bars: Any, has_new_bar: bool) -> None:
        """A new 5-second bar: copy it, count it, trim ib_async's list, deliver (or hold)."""
        if not has_new_bar:
            return
        st = self._st
        state = st.by_subscription.get(id(bars))
        if state is None:
            return
        state.updated = st.clock.now()
        latest = bars[-1]
        if len(bars) > 1:
            del bars[:-1]  # ib_async's list grows forever otherwise
        edge = st.edge
        assert edge is not None
        edge.receive()
        try:
            bar = bar_from_realtime(state.symbol, latest, st.options.source)
        except (TypeError, ValueError) as exc:
            st.invalid(state.symbol, exc)
            return
        if st.holding:
            state.held.append(bar)
        else:
            self.deliver_bar(state, bar)

    def deliver_bar(self, state: SymbolState, bar: Bar) -> bool:
        """Deliver a received ``bar`` unless a bar of that start (or later) was delivered
        already (then it is dropped as a duplicate, counted); False if it was dropped."""
        st = self._st
        edge = st.edge
        assert edge is not None
        if state.last_ts is not None and bar.ts <= state.last_ts:
            edge.drop("duplicate")
            st.counts["duplicates_dropped"] += 1
            return False
        state.last_ts = bar.ts
        if not edge.deliver(bar):
            self._pause()
        return True
