"""``IBKRStreamSource``: live quotes or 5-second bars from IB Gateway / TWS via ib_async.

    async with IBKRStreamSource(["AAPL", "MSFT"], mode="bars") as src:
        async for bar in src.stream():
            ...

What it does (``IBKROptions`` lists the knobs; ``client.py`` the parts that do it):

- connects read-only (``fetchFields=StartupFetchNONE``), qualifies the symbols (unknown
  ones are reported together, once; the rest stream), subscribes ``reqMktData`` (quotes) or
  ``reqRealTimeBars`` (bars);
- copies every update into an immutable ``Quote``/``Bar`` inside ib_async's synchronous
  callbacks, where it is counted as received, and hands it to the stream's ``Edge`` (the
  runtime's one channel: the source keeps no buffer of its own). The callbacks cannot
  wait: when the channel is full, quotes conflate per symbol (the default policy for
  quotes: the latest wins, counted) and under ``block`` (bars) the source stops reading
  its socket until the consumer made room, so TCP holds the gateway back and nothing is
  dropped; memory stays bounded by the channel plus one socket read;
- survives what IB does in real life: a dropped socket (reconnect with
  jittered exponential backoff, re-qualify, resubscribe, backfill missed bars from history),
  error 1101 (resubscribe on the same connection), 1102 after a lost link and a
  market-data farm blip 2103 -> 2104 (resubscribe bars, backfilling the gap), and silent
  data loss (a market-hours-aware staleness watchdog that warns, then resubscribes).

``provider=`` may instead be any object with async ``stream_quotes(instruments)``,
``stream_bars(instruments, resolution)`` and ``close()`` (``provider.MarketDataProvider``);
its records go through the same edge, with the same accounting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from mdp_core.channel import Channel
from mdp_core.edge import Edge
from mdp_core.logs import logger
from mdp_core.models import Record, parse_resolution
from mdp_core.providers.base import ProviderError, ProviderSource
from mdp_core.providers.ibkr.client import IBClient
from mdp_core.providers.ibkr.feed import ProviderFeed
from mdp_core.providers.ibkr.options import IBKROptions, split_options
from mdp_core.providers.ibkr.provider import IBAsyncProvider, is_provider_object
from mdp_core.providers.ibkr.state import IBKRIssue, State
from mdp_core.settings import IBKRSettings

__all__ = ["IBKRStreamSource"]


class IBKRStreamSource(ProviderSource[Record]):
    """Quotes or 5-second bars from IB (its native resolution is ``5s``; the runtime folds
    them into a coarser ``bar_resolution``).

    Args:
        symbols: up to ``ibkr_settings.max_lines`` symbols (one market-data line each);
            more raise ``ValueError`` (split them over several streams and client ids).
        mode: ``"quotes"`` (``reqMktData``) or ``"bars"`` (``reqRealTimeBars``).
        bar_resolution: the stream's resolution; a multiple of ``5s`` (IB's real-time bars).
            The source delivers 5-second bars; coarser ones are rolled up at the stream's
            edge (the runtime's, or the source's own when used without a runtime).
        ibkr_settings: host, port, client id, timeouts, backoff, watchdog (``MDP_IBKR_*``).
        provider: None (a new ib_async ``IB``), an ``IB`` to use (if already connected it
            is used as is and left connected by ``stop()``), an ``IBAsyncProvider``, or any
            object with async ``stream_quotes(instruments)``, ``stream_bars(instruments,
            resolution)`` and ``close()``, whose records are then asked for at the stream's
            own resolution.
        graceful_cancel_timeout: seconds ``stop()`` may take to cancel and disconnect.
        options: ``IBKROptions`` (channel, what to show, backfill, watchdog, read chunks, ...).

    Quotes: one ``Quote`` per ticker update, i.e. per TCP read touching that symbol
    (ib_async's unit: it applies every tick of a read, then emits the ticker once). Its
    values are the ticker's bid/ask/last and sizes after that read; an update that changed
    none of them is skipped. ``ts`` is ``ticker.time``: when the client received the data,
    in UTC (IB sends no exchange time for quotes), strictly increasing per symbol.

    Bars: ``ts`` is the bar start; ``open_``/``wap``/``count`` become ``open``/``vwap``/
    ``trade_count``. Bars are emitted once per (symbol, start); after a reconnect the gap is
    backfilled from history and released in time order with the held live bars, so
    downstream windows see no late bars (``subscriptions.py``).
    """

    name = "ibkr"
    push = True
    default_overflow = {"quotes": "conflate"}

    def __init__(
        self,
        symbols: str | Iterable[str],
        mode: str = "quotes",
        bar_resolution: str = "5s",
        ibkr_settings: IBKRSettings | None = None,
        provider: Any = None,
        graceful_cancel_timeout: float = 2.0,
        *,
        options: IBKROptions | None = None,
    ) -> None:
        _check_provider(provider, ibkr_settings, options)
        injected = provider is not None and is_provider_object(provider)
        injected = injected and not isinstance(provider, IBAsyncProvider)
        # An injected object delivers the stream's own resolution; IB delivers 5-second bars.
        super().__init__(symbols, mode, bar_resolution if injected else "5s")
        if not graceful_cancel_timeout > 0:
            raise ValueError(
                f"graceful_cancel_timeout {graceful_cancel_timeout!r}: expected seconds > 0"
            )
        self.graceful_cancel_timeout = float(graceful_cancel_timeout)
        self._requested = parse_resolution(bar_resolution) if self.mode == "bars" else None
        self._stopped = False
        self._client: IBClient | None = None
        self._feed: IBClient | ProviderFeed
        if injected:
            self.options = options or IBKROptions()
            self.settings = ibkr_settings or IBKRSettings()
            self._feed = ProviderFeed(
                provider, self.symbols, self.mode, self._requested, self.options.clock
            )
        else:
            ib_provider = (
                provider
                if isinstance(provider, IBAsyncProvider)
                else IBAsyncProvider(ibkr_settings, options, ib=provider)
            )
            self.options, self.settings = ib_provider.options, ib_provider.settings
            self._client = self._feed = ib_provider.client(self.symbols, self.mode, self._requested)
        self.channel_capacity = self.options.channel_capacity
        self.channel_overflow = self.options.overflow_for(self.mode)

    @classmethod
    def from_config(cls, **kwargs: Any) -> IBKRStreamSource:
        """Build from flat keyword arguments (the registry's, from ``streams.yaml``): the
        ``IBKROptions`` fields among them become ``options=``."""
        return cls(**split_options(kwargs))

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, qualify and subscribe (or start the injected provider's stream); then
        keep the stream alive in the background.

        Raises ``ProviderError`` (connection refused, duplicate client id, no handshake, no
        symbol qualified) after releasing everything it took."""
        own = self.edge is None
        if own:  # used on its own: the source's stream() reads its own channel
            channel: Channel[Record] = Channel(self.channel_capacity, self.channel_overflow)
            resample = self._requested if self._requested != self.resolution else None
            self.edge = Edge(channel, resolution=resample, name=f"ibkr:{self.mode}")
        assert self.edge is not None
        if self._feed.state != "new":
            raise ProviderError(f"{self!r} was already started: create a new source")
        await self._feed.start(self.edge, close_edge=own)

    async def stop(self) -> None:
        """Cancel the subscriptions and disconnect within ``graceful_cancel_timeout``;
        ``stream()`` then ends once it has yielded what was received. Idempotent; a
        reconnect waiting in its backoff is abandoned."""
        if self._stopped:
            return
        self._stopped = True
        await self._feed.stop(self.graceful_cancel_timeout)
        logger.info("ibkr: {} stopped ({})", self._where(), self._feed.summary())

    # -- consuming ---------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[Record]:
        """The records until ``stop()``; raises ``ProviderError`` if the source failed.

        It reads the stream's channel (the runtime's consumer reads it directly). One
        consumer at a time (records are handed out once)."""
        if self.edge is None or self._feed.state == "new":
            raise ProviderError("IBKRStreamSource.stream() called before start()")
        async for record in self.edge.channel.iter():
            yield record

    # -- observing ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``new``, ``connecting``, ``streaming``, ``reconnecting``, ``stopped`` or ``failed``."""
        return self._feed.state

    @property
    def errors(self) -> deque[IBKRIssue]:
        """The last 200 errors and warnings the source reported."""
        return self._feed.errors

    @property
    def ib(self) -> Any:
        """The ib_async ``IB`` in use (None before ``start()`` or with an injected
        provider), for diagnostics; changing its subscriptions behind the source's back is
        not supported."""
        return self._client.st.ib if self._client is not None else None

    @property
    def host(self) -> str:
        return self._client.st.host if self._client is not None else self.settings.host

    @property
    def port(self) -> int:
        return self._client.st.port if self._client is not None else self.settings.port

    @property
    def client_id(self) -> int:
        return self._client.st.client_id if self._client is not None else self.settings.client_id

    @property
    def unknown_symbols(self) -> list[str]:
        """Symbols IB did not know (error 200) at the last qualification."""
        return self._client.st.unknown_symbols if self._client is not None else []

    @property
    def backoff_delays(self) -> deque[float]:
        """The last reconnect delays actually waited."""
        if self._client is None:
            return deque()
        return self._client.supervisor.backoff.delays

    def stale_symbols(self) -> list[str]:
        """Symbols silent for ``stale_after`` seconds or more during market hours."""
        return self._feed.stale_symbols()

    def stats(self) -> dict[str, Any]:
        """Counters: connection events, resubscriptions, backfill, duplicates, staleness,
        errors by IB code, records received (at the edge) and invalid, read pauses."""
        return self._feed.stats()

    def _where(self) -> str:
        if isinstance(self._feed, ProviderFeed):
            return f"provider {type(self._feed.provider).__name__}"
        return f"{self.host}:{self.port} client {self.client_id}"


def _check_provider(provider: Any, settings: Any, options: Any) -> None:
    """``ValueError`` for a ``provider=`` the source cannot use, naming it."""
    if isinstance(provider, IBAsyncProvider):
        if settings is not None or options is not None:
            raise ValueError(
                "provider=IBAsyncProvider(...) brings its own settings and options: pass "
                "ibkr_settings= and options= to it, not to IBKRStreamSource"
            )
        return
    if provider is None or is_provider_object(provider) or hasattr(provider, "connectAsync"):
        return
    raise ValueError(
        f"provider {provider!r}: expected None, an ib_async IB, an IBAsyncProvider, or an "
        "object with async stream_quotes(instruments), stream_bars(instruments, resolution) "
        "and close()"
    )
