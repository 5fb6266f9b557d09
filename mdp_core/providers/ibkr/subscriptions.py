"""Subscriptions: qualify the symbols, subscribe quotes (``reqMktData``) or 5-second bars
(``reqRealTimeBars``), backfill the gaps of bars from history, release the held bars,
cancel and resubscribe.

Guarantees:
- unknown symbols are reported together, once (IB error 200); the rest stream; none known
  is a ``ProviderError``;
- after a reconnect or resubscription (bars), live bars are held while the gap since each
  symbol's last bar (before its first bar: since the first subscription; with
  ``resume_after``: since the last stored bar) is fetched from history (only complete bars
  older than the server time at the resubscription), then everything is released in time
  order, so downstream windows see no late bars. History is counted as received before it
  can be dropped as a duplicate;
- a failed backfill is counted and reported per symbol; the live bars flow on.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from mdp_core.logs import logger
from mdp_core.models import Bar, resolution_seconds
from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr.contracts import contract_for, what_to_show_for
from mdp_core.providers.ibkr.conversion import Conversion
from mdp_core.providers.ibkr.records import BAR_SECONDS, SymbolState, bar_from_history
from mdp_core.providers.ibkr.state import ClientState

__all__ = ["Subscriptions"]

_BACKFILL_MARGIN = 60  # extra seconds asked for, so the request surely reaches the last bar


class Subscriptions:
    """The subscriptions of one client on its current connection (see the module docstring)."""

    def __init__(self, state: ClientState, conversion: Conversion) -> None:
        self._st = state
        self._conversion = conversion
        self._contract_factory = state.options.contract_factory or contract_for
        # Backfill start for a symbol with no bar yet: just before the first subscription.
        self._bars_since: datetime | None = None
        if state.mode == "bars":
            for symbol, ts in (state.options.resume_after or {}).items():
                known = state.by_symbol.get(symbol.strip().upper())
                if known is not None:
                    known.last_ts = ts.astimezone(UTC)

    async def subscribe(self, initial: bool) -> None:
        """Qualify and subscribe every symbol on the current connection (after a reconnect
        the old subscriptions are dead: ib_async made new objects)."""
        st = self._st
        st.by_subscription.clear()
        for state in st.by_symbol.values():
            state.subscription = None
        known = await self._qualify()
        if st.mode == "quotes":
            self._subscribe_quotes(known)
        else:
            resuming = any(s.last_ts is not None for s in known)
            coarser = st.requested not in (None, "5s")  # build the first window whole
            await self._subscribe_bars(known, backfill=not initial or resuming or coarser)
        if st.watchdog is not None:
            st.watchdog.rearm([s.symbol for s in known], st.clock.now())

    async def resubscribe(self, reasons: dict[str, str]) -> None:
        """Re-request the data of ``reasons``' symbols on the current connection."""
        st = self._st
        states = [st.by_symbol[s] for s in reasons if st.by_symbol[s].contract is not None]
        if not states or not st.ib.isConnected():
            return
        why = sorted(set(reasons.values()))
        logger.warning(
            "ibkr: resubscribing {} symbol(s) ({}): {}",
            len(states), ", ".join(why), ",".join(s.symbol for s in states),
        )  # fmt: skip
        self.cancel(states)
        st.counts["resubscribes"] += 1
        if st.mode == "quotes":
            self._subscribe_quotes(states)
        else:
            await self._subscribe_bars(states, backfill=True)

    def cancel(self, states: list[SymbolState] | None = None) -> None:
        """Cancel the subscriptions of ``states`` (None: all); errors are only logged (the
        connection may be going away)."""
        st = self._st
        ib = st.ib
        for state in st.by_symbol.values() if states is None else states:
            sub, state.subscription = state.subscription, None
            if sub is None:
                continue
            st.by_subscription.pop(id(sub), None)
            try:
                if st.mode == "quotes":
                    ib.cancelMktData(state.contract)
                else:
                    ib.cancelRealTimeBars(sub)
            except Exception as exc:
                logger.debug("ibkr: cancelling {} failed: {}", state.symbol, exc)

    def release_held(self, backfilled: list[Bar]) -> None:
        """Deliver the backfilled and the held live bars in time order (duplicates are
        dropped, counted). All of them were counted as received when they arrived."""
        st = self._st
        merged: list[tuple[datetime, bool, Bar]] = [(b.ts, False, b) for b in backfilled]
        for state in st.by_symbol.values():
            merged.extend((b.ts, True, b) for b in state.held)
            state.held = []
        st.holding = False
        merged.sort(key=lambda item: (item[0], item[1]))  # history first on equal times
        for _, live, bar in merged:
            if self._conversion.deliver_bar(st.by_symbol[bar.symbol], bar) and not live:
                st.counts["backfilled_bars"] += 1

    async def _qualify(self) -> list[SymbolState]:
        """Qualify every symbol; report the unknown ones together; return the known ones."""
        st = self._st
        contracts = {symbol: self._contract_factory(symbol) for symbol in st.symbols}
        timeout = 2 * st.settings.connect_timeout + len(contracts) / 40
        try:
            async with asyncio.timeout(timeout):
                await st.ib.qualifyContractsAsync(*contracts.values())
        except TimeoutError:
            raise ProviderError(
                f"qualifying {len(contracts)} contract(s) at {st.where()} took longer "
                f"than {timeout:.0f}s"
            ) from None
        known: list[SymbolState] = []
        unknown: list[str] = []
        for symbol, contract in contracts.items():
            if getattr(contract, "conId", 0):
                state = st.by_symbol[symbol]
                state.contract = contract
                known.append(state)
            else:
                unknown.append(symbol)
        if unknown != st.unknown_symbols:
            st.unknown_symbols = unknown
            if unknown:
                message = (
                    f"{len(unknown)} unknown symbol(s) at {st.where()}: "
                    f"{', '.join(unknown)} (IB error 200, no security definition, e.g. for "
                    f"{contracts[unknown[0]]!r}); streaming the other {len(known)}: "
                    f"{', '.join(s.symbol for s in known)}"
                )
                logger.error("ibkr: {}", message)
                st.issue(200, message, unknown)
        if not known:
            raise ProviderError(
                f"none of the symbols {', '.join(st.symbols)} is known at {st.where()} "
                "(IB error 200, no security definition): check the symbols, or pass "
                "contract_factory= for other exchanges, currencies or security types"
            )
        return known

    def _subscribe_quotes(self, states: list[SymbolState]) -> None:
        st = self._st
        ticks = st.options.generic_ticks
        for state in states:
            ticker = st.ib.reqMktData(state.contract, ticks, False, False, [])
            state.subscription = ticker
            st.by_subscription[id(ticker)] = state

    async def _subscribe_bars(self, states: list[SymbolState], backfill: bool) -> None:
        """Subscribe real-time bars; with ``backfill``, hold the live bars, fetch each gap
        from history, then release both in time order (see the module docstring)."""
        st = self._st
        opts = st.options
        wanted = backfill and opts.backfill
        st.holding = wanted  # live bars wait until the gaps are known (and filled)
        backfilled: list[Bar] = []
        try:
            for state in states:
                what = what_to_show_for(state.contract, opts.what_to_show)  # FX: MIDPOINT
                bars = st.ib.reqRealTimeBars(state.contract, BAR_SECONDS, what, self._rth, [])
                state.subscription = bars
                st.by_subscription[id(bars)] = state
            if opts.backfill and self._bars_since is None:
                await self._mark_first_subscription()
            gaps = [
                s for s in states if s.last_ts is not None or self._bars_since is not None
            ] if wanted else []  # fmt: skip
            if gaps:
                backfilled = await self._backfill(gaps)
        finally:
            self.release_held(backfilled)

    @property
    def _rth(self) -> bool:
        use_rth = self._st.options.use_rth
        return self._st.settings.use_rth if use_rth is None else bool(use_rth)

    async def _backfill(self, gaps: list[SymbolState]) -> list[Bar]:
        """The missed bars of ``gaps``; a symbol whose request failed is reported, counted
        and left out."""
        st = self._st
        # Server time once the subscriptions are sent: live bars cover every bar from the
        # one in progress at this moment on; history fills the rest (complete bars only).
        try:
            async with asyncio.timeout(st.options.backfill_timeout):
                server_now = await st.ib.reqCurrentTimeAsync()
        except TimeoutError:
            results: list[Any] = [TimeoutError("no server time from IB")] * len(gaps)
        else:
            results = await asyncio.gather(
                *(self._fetch_gap(s, server_now) for s in gaps), return_exceptions=True
            )
        backfilled: list[Bar] = []
        for state, result in zip(gaps, results, strict=True):
            if isinstance(result, BaseException):
                st.counts["backfill_failures"] += 1
                since = state.last_ts or self._bars_since
                message = f"backfill of {state.symbol} since {since} failed: {result}"
                logger.warning("ibkr: {}", message)
                st.issue(None, message, [state.symbol])
            else:
                backfilled.extend(result)
        return backfilled

    async def _mark_first_subscription(self) -> None:
        """Note where the first subscription starts: a symbol's bars before its first live
        bar (the rest of the stream's first window, or an outage right after the start)
        are backfilled from there. One bar of margin, as the subscription and this request
        may straddle a boundary."""
        st = self._st
        try:
            async with asyncio.timeout(st.options.backfill_timeout):
                server_now = await st.ib.reqCurrentTimeAsync()
        except (TimeoutError, ConnectionError, OSError) as exc:
            logger.warning("ibkr: server time not known ({}): no backfill before a first bar", exc)
            return
        # From the start of the stream's window that held the bar before the one in progress
        # (a coarser first bar is then built whole from history; for 5-second bars, one bar
        # of margin). ``_fetch_gap`` takes the bars after ``_bars_since``.
        window = resolution_seconds(st.requested or "5s")
        before = server_now.timestamp() - 2 * BAR_SECONDS
        start = math.floor(before / window) * window - BAR_SECONDS
        self._bars_since = datetime.fromtimestamp(start, UTC)

    async def _fetch_gap(self, state: SymbolState, server_now: datetime) -> list[Bar]:
        """Complete 5-second bars after ``state.last_ts`` (or, before the symbol's first bar,
        after the first subscription) that end by ``server_now``."""
        st = self._st
        opts = st.options
        since = state.last_ts if state.last_ts is not None else self._bars_since
        assert since is not None
        complete_until = server_now - timedelta(seconds=BAR_SECONDS)  # last complete start
        if complete_until <= since:
            return []
        gap = (server_now - since).total_seconds()
        seconds = math.ceil(gap) + _BACKFILL_MARGIN
        if seconds > opts.max_backfill_seconds:
            message = (
                f"{state.symbol}: {gap:.0f}s of bars missed; backfilling only the last "
                f"{opts.max_backfill_seconds}s (max_backfill_seconds)"
            )
            logger.warning("ibkr: {}", message)
            st.issue(None, message, [state.symbol])
            seconds = opts.max_backfill_seconds
        st.counts["backfill_requests"] += 1
        # Our own timeout: ib_async's returns an empty result on timeout, which would look
        # like "nothing was missed"; a request error does the same (checked below).
        async with asyncio.timeout(opts.backfill_timeout):
            history = await st.ib.reqHistoricalDataAsync(
                state.contract, endDateTime="", durationStr=f"{seconds} S",
                barSizeSetting="5 secs", useRTH=self._rth,
                whatToShow=what_to_show_for(state.contract, opts.what_to_show),
                formatDate=2, timeout=0,
            )  # fmt: skip
        error = st.request_errors.pop(getattr(history, "reqId", -1), None)
        if error is not None:
            raise ProviderError(f"historical data request refused: {error}")
        bars = []
        edge = st.edge
        assert edge is not None
        for item in history or ():
            if not isinstance(item.date, datetime):
                continue  # a daily bar (a date): not one of the 5-second bars asked for
            try:
                bar = bar_from_history(state.symbol, item, opts.source)
            except (TypeError, ValueError) as exc:
                edge.receive()
                st.invalid(state.symbol, exc)  # one bad bar: counted, the gap goes on
                continue
            if since < bar.ts <= complete_until:
                edge.receive()  # history is received too: counted before it can be dropped
                bars.append(bar)
        logger.info("ibkr: backfilled {} bar(s) of {} after {}", len(bars), state.symbol, since)
        return bars
