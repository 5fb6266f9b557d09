"""Connection supervision: connect, reconnect with backoff, resubscribe on request, and
watch for silent symbols.

Guarantees:
- a lost connection is retried after a jittered exponential backoff (``timers.Backoff``),
  forever, until connected (then everything is re-qualified, resubscribed and backfilled)
  or until the client stops; with ``reconnect=False`` the stream fails instead;
- resubscriptions asked for by the error codes or the watchdog run one at a time, on the
  supervisor's task (the callbacks that ask never block);
- the watchdog checks a few times per ``stale_after`` (on the options' clock), and only
  while streaming, not holding bars and not paused (that silence is ours): a symbol silent
  for ``stale_after`` during market hours is reported, after ``resubscribe_after`` it is
  resubscribed;
- an unexpected error fails the stream: ``ProviderError`` from ``stream()``, never a
  silent end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from mdp_core.logs import logger
from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr.connection import connect_ib
from mdp_core.providers.ibkr.state import ClientState
from mdp_core.providers.ibkr.subscriptions import Subscriptions
from mdp_core.providers.ibkr.timers import Backoff, every

__all__ = ["Supervisor"]


class Supervisor:
    """Keeps one client's connection and subscriptions alive (see the module docstring)."""

    def __init__(self, state: ClientState, subscriptions: Subscriptions) -> None:
        self._st = state
        self._subs = subscriptions
        settings, options = state.settings, state.options
        self.backoff = Backoff(
            settings.reconnect_initial_backoff,
            settings.reconnect_max_backoff,
            options.sleep,
            options.rng,
        )
        self._wake = asyncio.Event()
        self._resubscribe: dict[str, str] = {}  # symbol -> reason, pending

    async def connect(self) -> None:
        """Connect read-only (``connect_ib``: errors that say what to do), counted."""
        st = self._st
        s = st.settings
        st.disconnected = False
        try:
            await connect_ib(
                st.ib, st.lib, host=st.host, port=st.port, client_id=st.client_id,
                timeout=s.connect_timeout, readonly=s.readonly, account=s.account,
            )  # fmt: skip
        except ProviderError:
            st.counts["connect_failures"] += 1
            raise
        st.counts["connects"] += 1
        if s.market_data_type != 1:
            st.ib.reqMarketDataType(s.market_data_type)
        logger.info("ibkr: connected to {} ({})", st.where(), st.lib.name)

    def request_resubscribe(self, symbols: Iterable[str], reason: str) -> None:
        """Ask for ``symbols`` to be resubscribed (done on the supervisor's task)."""
        for symbol in symbols:
            self._resubscribe.setdefault(symbol, reason)
        self._wake.set()

    @property
    def pending(self) -> dict[str, str]:
        """Resubscriptions asked for and not yet done: symbol -> reason."""
        return dict(self._resubscribe)

    def on_disconnected(self) -> None:
        """ib_async's ``disconnectedEvent``: reconnect (unless stopping)."""
        st = self._st
        if st.stopping or st.disconnected:
            return
        st.disconnected = True
        if st.state == "streaming":
            st.counts["disconnects"] += 1
            logger.warning("ibkr: disconnected from {}", st.where())
        self._wake.set()

    def wake(self) -> None:
        """Let ``run()`` notice ``stopping``."""
        self._wake.set()

    async def run(self) -> None:
        """Reconnect after a disconnect; resubscribe when asked (1101, 2104, watchdog)."""
        st = self._st
        try:
            while not st.stopping:
                await self._wake.wait()
                self._wake.clear()
                if st.stopping:
                    return
                if st.disconnected:
                    if not st.options.reconnect:
                        raise ProviderError(f"connection to {st.where()} lost")
                    await self._reconnect()
                elif self._resubscribe:
                    reasons, self._resubscribe = self._resubscribe, {}
                    try:
                        await self._subs.resubscribe(reasons)
                    except (ConnectionError, OSError) as exc:
                        logger.warning("ibkr: resubscription interrupted: {}", exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    async def _reconnect(self) -> None:
        """Back off, connect, re-qualify, resubscribe (and backfill); until done or stopped."""
        st = self._st
        st.state = "reconnecting"
        attempt = 0
        while not st.stopping:
            attempt += 1
            delay = self.backoff.delay(attempt)
            logger.info(
                "ibkr: reconnecting to {} in {:.2f}s (attempt {})", st.where(), delay, attempt
            )
            await self.backoff.wait(delay)
            if st.stopping:
                return
            try:
                await self.connect()
                await self._subs.subscribe(initial=False)
            except (ProviderError, ConnectionError, OSError, TimeoutError) as exc:
                logger.warning("ibkr: reconnect attempt {} failed: {}", attempt, exc)
                if st.ib.isConnected():
                    st.ib.disconnect()
                st.disconnected = True
                continue
            if st.disconnected or not st.ib.isConnected():
                continue  # lost again while resubscribing
            st.counts["reconnects"] += 1
            self._resubscribe.clear()  # everything was just subscribed afresh
            st.state = "streaming"
            logger.info("ibkr: reconnected to {} after {} attempt(s)", st.where(), attempt)
            return

    def _fail(self, exc: Exception) -> None:
        st = self._st
        st.state = "failed"
        error = exc if isinstance(exc, ProviderError) else ProviderError(
            f"ibkr source at {st.where()} failed: {type(exc).__name__}: {exc}"
        )  # fmt: skip
        logger.error("ibkr: {}", error)
        st.issue(None, str(error))
        if st.edge is not None:
            st.edge.close(error)

    async def watch(self) -> None:
        """Check for silent symbols a few times per ``stale_after`` (see the module
        docstring); runs until cancelled."""
        st = self._st
        watchdog = st.watchdog
        assert watchdog is not None
        interval = max(0.05, min(1.0, watchdog.stale_after / 4))
        async for now in every(st.clock, interval):
            if st.stopping:
                return
            if st.state != "streaming" or st.holding or st.paused:
                continue
            last = {s.symbol: s.updated for s in st.by_symbol.values() if s.subscription}
            verdict = watchdog.check(last, now)
            if verdict.newly_stale:
                message = (
                    f"no data for {watchdog.stale_after:g}s during market hours from "
                    f"{', '.join(verdict.newly_stale)} ({st.where()}): stale"
                )
                logger.warning("ibkr: {}", message)
                st.issue(None, message, verdict.newly_stale)
            if verdict.recovered:
                logger.info("ibkr: data flows again for {}", ", ".join(verdict.recovered))
            if verdict.resubscribe:
                self.request_resubscribe(verdict.resubscribe, "stale")
