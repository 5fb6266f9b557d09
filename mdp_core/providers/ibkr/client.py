"""``IBClient``: one ib_async connection streaming one source's symbols, composed of
single-concern parts (each in its own module):

- ``Supervisor`` (``supervisor.py``): connect, reconnect with backoff, resubscribe on
  request, the staleness watchdog;
- ``Subscriptions`` (``subscriptions.py``): qualify, subscribe, backfill gaps, release held
  bars, cancel;
- ``ErrorCodes`` (``errors.py``): IB error code -> action;
- ``Conversion`` (``conversion.py``): ticker and bar callbacks -> ``Quote``/``Bar`` at the edge;
- ``FlowControl``, ``ReadSplitter`` (``flow.py``): pause reading when the downstream is
  full; split large socket reads.

They share one ``ClientState`` (``state.py``). ``IBClient`` wires them to ib_async's events
and runs their lifecycle; ``IBKRStreamSource`` is its public face.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from mdp_core.edge import Edge
from mdp_core.logs import logger
from mdp_core.models import resolution_seconds
from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr.compat import load_ib_library
from mdp_core.providers.ibkr.conversion import Conversion
from mdp_core.providers.ibkr.errors import ErrorCodes
from mdp_core.providers.ibkr.flow import FlowControl, ReadSplitter
from mdp_core.providers.ibkr.options import IBKROptions
from mdp_core.providers.ibkr.records import BAR_SECONDS
from mdp_core.providers.ibkr.state import ClientState, IBKRIssue, State
from mdp_core.providers.ibkr.subscriptions import Subscriptions
from mdp_core.providers.ibkr.supervisor import Supervisor
from mdp_core.providers.ibkr.timers import within
from mdp_core.providers.ibkr.watchdog import StalenessWatchdog, load_market_hours
from mdp_core.settings import IBKRSettings

__all__ = ["IBClient"]


class IBClient:
    """See the module docstring. ``ib``: an ``IB`` to use (None: a new one); if it is
    already connected it is used as is and left connected by ``stop()``.

    Raises ``ValueError`` at construction for more symbols than ``settings.max_lines``, a
    bar resolution that is not a multiple of 5 s, or bad watchdog thresholds; and
    ``ProviderError`` if neither ib_async nor ib_insync is installed."""

    def __init__(
        self,
        symbols: list[str],
        mode: str,
        requested: str | None,
        settings: IBKRSettings,
        options: IBKROptions,
        ib: Any = None,
    ) -> None:
        if len(symbols) > settings.max_lines:
            raise ValueError(
                f"{len(symbols)} symbols for one IB connection: the limit is "
                f"{settings.max_lines} market-data lines per connection (MDP_IBKR_MAX_LINES); "
                "split them over several streams, each with its own client id"
            )
        if requested is not None and resolution_seconds(requested) % BAR_SECONDS:
            raise ValueError(
                f"bar_resolution {requested!r} is not possible from IB's 5-second "
                "real-time bars: expected a multiple of 5s (5s, 10s, 15s, 30s, 1m, ...)"
            )
        stale = settings.stale_after if options.stale_after is None else options.stale_after
        self.stale_after = float(stale)
        self.resubscribe_after = (
            4 * self.stale_after if options.resubscribe_after is None else options.resubscribe_after
        )
        # validate the thresholds now (the watchdog itself is built in start())
        StalenessWatchdog(self.stale_after, self.resubscribe_after, lambda now: True)
        self.lib = load_ib_library()
        st = self.st = ClientState(symbols, mode, requested, settings, options, self.lib, ib)
        self._flow = FlowControl(st)
        self._splitter = ReadSplitter(options.read_chunk)
        self._conversion = Conversion(st, self._flow.pause)
        self.subscriptions = Subscriptions(st, self._conversion)
        self.supervisor = Supervisor(st, self.subscriptions)
        self._errors = ErrorCodes(st, self.supervisor.request_resubscribe)
        self._owns_connection = True
        self._close_edge = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, edge: Edge[Any], close_edge: bool) -> None:
        """Connect, qualify and subscribe into ``edge``; then keep the stream alive in the
        background (``close_edge``: the edge is the client's own, closed by ``stop()``).

        Raises ``ProviderError`` (connection refused, duplicate client id, no handshake, no
        symbol qualified) after releasing everything it took."""
        st = self.st
        if st.state != "new":
            raise ProviderError("this IBKR source was already started: create a new source")
        st.state = "connecting"
        st.edge = edge
        self._close_edge = close_edge
        self.lib.bind_loop()
        try:
            if st.ib is None:
                st.ib = self.lib.IB()
            ib = st.ib
            self._attach(ib)
            if ib.isConnected():  # a connection the caller made: use it, leave it open
                self._owns_connection = False
                client = ib.client
                st.host, st.port, st.client_id = client.host, client.port, client.clientId
            else:
                await self.supervisor.connect()
            await self.subscriptions.subscribe(initial=True)
            await self._start_watchdog()
        except BaseException:
            await self._teardown()
            st.state = "failed"
            raise
        st.state = "streaming"
        self._tasks = [
            asyncio.create_task(self.supervisor.run(), name=f"ibkr-supervisor-{st.client_id}"),
        ]
        if st.watchdog is not None:
            self._tasks.append(
                asyncio.create_task(self.supervisor.watch(), name=f"ibkr-watchdog-{st.client_id}")
            )

    async def _start_watchdog(self) -> None:
        st = self.st
        if not st.options.watchdog:
            return
        market_open = st.options.market_open
        if market_open is None:
            market_open = await load_market_hours(st.settings.exchange_calendar)
        st.watchdog = StalenessWatchdog(self.stale_after, self.resubscribe_after, market_open)
        st.watchdog.rearm(st.symbols, st.clock.now())

    async def stop(self, timeout: float) -> None:
        """Cancel the subscriptions and disconnect within ``timeout`` seconds of the options'
        clock (what is left is abandoned, with a warning). Idempotent; a reconnect waiting
        in its backoff is abandoned."""
        st = self.st
        if st.stopping:
            return
        st.stopping = True
        self.supervisor.wake()
        if not await within(st.clock, timeout, self._teardown()):
            logger.warning("ibkr: stopping took longer than {}s; abandoned", timeout)
        if st.state != "failed":
            st.state = "stopped"

    async def _teardown(self) -> None:
        """Stop the background tasks, cancel subscriptions, disconnect (if ours), detach.
        Bars held during a backfill are delivered first (a backfill cancelled here releases
        what it has)."""
        st = self.st
        st.stopping = True
        tasks, self._tasks = self._tasks, []
        try:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:  # synchronous from here: done even if stop()'s deadline cut the wait short
            ib = st.ib
            try:
                if ib is not None and ib.isConnected():
                    self.subscriptions.cancel()
                    if self._owns_connection:
                        ib.disconnect()
            finally:
                if ib is not None:
                    self._detach(ib)
                self._flow.cancel()
                if self._close_edge and st.edge is not None:
                    st.edge.close()

    def _attach(self, ib: Any) -> None:
        ib.errorEvent += self._errors.on_error
        ib.disconnectedEvent += self.supervisor.on_disconnected
        if self.st.mode == "quotes":
            ib.pendingTickersEvent += self._conversion.on_tickers
        else:
            ib.barUpdateEvent += self._conversion.on_bar_update
        self._splitter.install(ib)

    def _detach(self, ib: Any) -> None:
        ib.errorEvent -= self._errors.on_error
        ib.disconnectedEvent -= self.supervisor.on_disconnected
        if self.st.mode == "quotes":
            ib.pendingTickersEvent -= self._conversion.on_tickers
        else:
            ib.barUpdateEvent -= self._conversion.on_bar_update
        self._splitter.remove()

    # -- observing ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The client's state (see ``state.State``)."""
        return self.st.state

    @property
    def errors(self) -> deque[IBKRIssue]:
        """The last 200 errors and warnings reported."""
        return self.st.errors

    def stale_symbols(self) -> list[str]:
        """Symbols silent for ``stale_after`` seconds or more during market hours."""
        return sorted(self.st.watchdog.stale) if self.st.watchdog is not None else []

    def stats(self) -> dict[str, Any]:
        """Counters: connection events, resubscriptions, backfill, duplicates, staleness,
        errors by IB code, records received (at the edge) and invalid, read pauses."""
        st = self.st
        c = st.counts
        return {
            "state": st.state,
            "endpoint": st.where(),
            "mode": st.mode,
            "symbols": len(st.symbols),
            "subscribed": sum(1 for s in st.by_symbol.values() if s.subscription is not None),
            "unknown_symbols": list(st.unknown_symbols),
            "connects": c["connects"],
            "connect_failures": c["connect_failures"],
            "disconnects": c["disconnects"],
            "reconnects": c["reconnects"],
            "resubscribes": c["resubscribes"],
            "backfill_requests": c["backfill_requests"],
            "backfill_failures": c["backfill_failures"],
            "backfilled_bars": c["backfilled_bars"],
            "duplicates_dropped": c["duplicates_dropped"],
            "late_bars": c["late_bars"],
            "stale": st.watchdog.stale_events if st.watchdog is not None else 0,
            "stale_symbols": self.stale_symbols(),
            "errors_by_code": dict(st.codes),
            "messages_received": self._messages_received(),
            "received": st.edge.received if st.edge is not None else 0,
            "invalid": c["invalid"],
            "held": sum(len(s.held) for s in st.by_symbol.values()),
            "pauses": c["pauses"],
            "paused": st.paused,
        }

    def summary(self) -> str:
        """One line for the log when the stream stops."""
        c = self.st.counts
        received = self.st.edge.received if self.st.edge is not None else 0
        return (
            f"received {received}, invalid {c['invalid']}, read pauses {c['pauses']}, "
            f"reconnects {c['reconnects']}, resubscribes {c['resubscribes']}, "
            f"backfilled {c['backfilled_bars']}"
        )

    def _messages_received(self) -> int:
        """TWS API messages received on the current connection (0 when not connected)."""
        try:
            return int(self.st.ib.client.connectionStats().numMsgRecv)
        except Exception:  # not connected (or no such statistic in this client version)
            return 0
