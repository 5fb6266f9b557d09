"""``IBKRStreamSource``: live quotes or 5-second bars from IB Gateway / TWS via ib_async.

    async with IBKRStreamSource(["AAPL", "MSFT"], mode="bars") as src:
        async for bar in src.stream():
            ...

What it does (the class docstring lists the knobs):

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
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from mdp_core.channel import Channel, ChannelOverflow
from mdp_core.coordinator import RetryPolicy
from mdp_core.edge import Edge
from mdp_core.logs import logger
from mdp_core.models import Bar, Quote, Record, parse_resolution, resolution_seconds
from mdp_core.providers.base import ProviderError, ProviderSource
from mdp_core.providers.ibkr.compat import IBLibrary, load_ib_library
from mdp_core.providers.ibkr.connection import connect_ib
from mdp_core.providers.ibkr.contracts import contract_for, what_to_show_for
from mdp_core.providers.ibkr.records import (
    BAR_SECONDS,
    SymbolState,
    bar_from_history,
    bar_from_realtime,
)
from mdp_core.providers.ibkr.watchdog import MarketOpen, StalenessWatchdog, load_market_hours
from mdp_core.settings import IBKRSettings

__all__ = ["IBKRIssue", "IBKRStreamSource"]

State = Literal["new", "connecting", "streaming", "reconnecting", "stopped", "failed"]
Sleep = Callable[[float], Awaitable[None]]

WHAT_TO_SHOW = ("TRADES", "MIDPOINT", "BID", "ASK")
_ONE_US = timedelta(microseconds=1)
_INF = math.inf
_BACKFILL_MARGIN = 60  # extra seconds asked for, so the request surely reaches the last bar
_LOG_EVERY = 10.0  # seconds between repeated warnings (paused reading, invalid records)
_SPLIT: set[int] = set()  # id() of the ``hasData`` events whose reads we split already
# Notices that need no reaction: 200 (qualification reports it), 300 (cancelling a
# subscription IB already dropped), 326 (connect_ib reports it), farm OK/inactive notices,
# 10225 (ib_async resubscribes bars after a bust event itself).
_QUIET_CODES = frozenset({200, 300, 326, 2104, 2106, 2107, 2108, 2119, 2158, 10225})
# Codes IB (and ib_async) treat as warnings; the rest are errors.
_WARNING_CODES = frozenset({105, 110, 165, 321, 329, 399, 404, 434, 492, 10167})


@dataclass(frozen=True, slots=True)
class IBKRIssue:
    """An error or warning the source reported (kept in ``source.errors``)."""

    at: datetime
    code: int | None
    message: str
    symbols: tuple[str, ...] = ()


class IBKRStreamSource(ProviderSource[Record]):
    """Quotes or 5-second bars from IB via ib_async (its native resolution is ``5s``; the
    runtime folds them into a coarser ``bar_resolution``).

    Args:
        symbols: up to ``ibkr_settings.max_lines`` symbols (one market-data line each);
            more raise ``ValueError`` (split them over several streams and client ids).
        mode: ``"quotes"`` (``reqMktData``) or ``"bars"`` (``reqRealTimeBars``).
        bar_resolution: the stream's resolution; a multiple of ``5s`` (IB's real-time bars).
            The source delivers 5-second bars; coarser ones are rolled up at the stream's
            edge (the runtime's, or the source's own when used without a runtime).
        ibkr_settings: host, port, client id, timeouts, backoff, watchdog (``MDP_IBKR_*``).
        provider: an ``ib_async.IB`` to use (None: a new one). If it is already connected
            it is used as is and left connected by ``stop()``.
        graceful_cancel_timeout: seconds ``stop()`` may take to cancel and disconnect.
        channel_capacity, channel_overflow: the channel ``stream()`` reads when the source
            is used on its own, without a runtime (which otherwise attaches the stream's
            edge). ``channel_overflow=None``: ``conflate`` for quotes, ``block`` for bars.
        what_to_show: ``TRADES`` (default), ``MIDPOINT``, ``BID`` or ``ASK`` (bars).
        use_rth: regular trading hours only (default ``ibkr_settings.use_rth``).
        contract_factory: symbol -> ib_async contract (default: the instrument id's,
            ``mdp_core.providers.ibkr.contracts.contract_for``: ``AAPL`` is ``Stock("AAPL", "SMART",
            "USD")``, ``EUR:CASH:IDEALPRO:USD`` the EUR.USD pair, ...). Records keep the
            requested symbol. Bars of FX (``secType`` CASH) are MIDPOINT when
            ``what_to_show`` is TRADES: IB has no FX trades.
        generic_ticks: ``genericTickList`` of ``reqMktData``.
        backfill: after a reconnect or resubscription (bars), fetch the missed 5-second
            bars with ``reqHistoricalData``; ``max_backfill_seconds`` caps the gap asked for.
        resume_after: bars mode: per symbol, the start of the last 5-second bar already
            stored (e.g. read from the table by ``Pipeline``). The first subscription then
            backfills every complete bar after it, so bars missed while no stream ran (a
            restart, a relaunched run) are not lost; anything at or before it is dropped
            as a duplicate.
        stale_after, resubscribe_after: watchdog thresholds in seconds of silence during
            market hours (default ``ibkr_settings.stale_after`` and 4x that); ``market_open``
            replaces the exchange calendar (``ibkr_settings.exchange_calendar``);
            ``watchdog=False`` turns the watchdog off.
        reconnect: reconnect after a lost connection (default True); ``rng`` and ``sleep``
            make the backoff deterministic in tests.
        read_chunk: feed ib_async's decoder at most this many bytes at a time (None: as
            received). ib_async consumes its receive buffer by re-slicing ``bytes``, which is
            quadratic in the size of one read, and a client that fell behind gets reads of
            up to 256 KiB; chunking keeps it linear (``bench_ibkr``: a client behind its
            gateway decodes 1.4-2x the messages/s with 8 KiB chunks). A chunk is also the
            unit of a quote: trades of a symbol in one chunk fold into one quote. 2 KiB
            (~70 messages, ~11 trades) folds few when many symbols stream and still spreads
            the per-read cost (``bench_ibkr``, 50 symbols, client behind: ~6.7 messages per
            quote against ~7.7 with 4 KiB and ~10 with 8 KiB; 1.5-2x the quotes per
            CPU-second of 8 KiB).
        source: the ``source`` field of the records.

    Quotes: one ``Quote`` per ticker update, i.e. per TCP read touching that symbol
    (ib_async's unit: it applies every tick of a read, then emits the ticker once). Its
    values are the ticker's bid/ask/last and sizes after that read (IB's empty ``-1`` and
    ``NaN`` become ``None``); an update that changed none of them (volume, timestamps) is
    skipped. ``ts`` is ``ticker.time``: when the client received the data, in UTC (IB
    sends no exchange time for quotes). Per symbol ``ts`` strictly increases (``+1 µs``
    when two updates share a clock reading), so ``(symbol, ts)`` keys never collide.

    Bars: ``ts`` is the bar start; ``open_``/``wap``/``count`` become ``open``/``vwap``/
    ``trade_count``. Bars are emitted once per (symbol, start): anything at or before the
    last emitted start is dropped as a duplicate (counted). After a reconnect the live bars
    are held while the gap since each symbol's last bar (before its first bar: since the
    first subscription) is backfilled from history (only complete bars older than the
    server time at the resubscription), then everything is released in time order, so
    downstream windows see no late bars.
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
        graceful_cancel_timeout: float = 5.0,
        *,
        channel_capacity: int = 10_000,
        channel_overflow: ChannelOverflow | None = None,
        what_to_show: str = "TRADES",
        use_rth: bool | None = None,
        contract_factory: Callable[[str], Any] | None = None,
        generic_ticks: str = "",
        backfill: bool = True,
        resume_after: Mapping[str, datetime] | None = None,
        max_backfill_seconds: int = 3600,
        backfill_timeout: float = 30.0,
        watchdog: bool = True,
        stale_after: float | None = None,
        resubscribe_after: float | None = None,
        market_open: MarketOpen | None = None,
        reconnect: bool = True,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        read_chunk: int | None = 2048,
        source: str = "ibkr",
    ) -> None:
        super().__init__(symbols, mode, "5s")
        requested = parse_resolution(bar_resolution) if self.mode == "bars" else None
        settings = ibkr_settings if ibkr_settings is not None else IBKRSettings()
        if len(self.symbols) > settings.max_lines:
            raise ValueError(
                f"{len(self.symbols)} symbols for one IB connection: the limit is "
                f"{settings.max_lines} market-data lines per connection (MDP_IBKR_MAX_LINES); "
                "split them over several streams, each with its own client id"
            )
        if requested is not None and resolution_seconds(requested) % BAR_SECONDS:
            raise ValueError(
                f"bar_resolution {bar_resolution!r} is not possible from IB's 5-second "
                "real-time bars: expected a multiple of 5s (5s, 10s, 15s, 30s, 1m, ...)"
            )
        what = what_to_show.upper() if isinstance(what_to_show, str) else what_to_show
        if what not in WHAT_TO_SHOW:
            raise ValueError(
                f"what_to_show {what_to_show!r} is invalid: expected one of "
                f"{', '.join(WHAT_TO_SHOW)}"
            )
        if not graceful_cancel_timeout > 0:
            raise ValueError(
                f"graceful_cancel_timeout {graceful_cancel_timeout!r}: expected seconds > 0"
            )
        if read_chunk is not None and (not isinstance(read_chunk, int) or read_chunk < 64):
            raise ValueError(f"read_chunk {read_chunk!r}: expected bytes >= 64, or None")
        if not (isinstance(max_backfill_seconds, int) and max_backfill_seconds >= BAR_SECONDS):
            raise ValueError(f"max_backfill_seconds {max_backfill_seconds!r}: expected an int >= 5")
        if channel_overflow is None:
            channel_overflow = "conflate" if self.mode == "quotes" else "block"
        Channel(channel_capacity, channel_overflow)  # validates both now, not at start()
        self._requested = requested
        self.lib: IBLibrary = load_ib_library()
        self.settings = settings
        self.graceful_cancel_timeout = float(graceful_cancel_timeout)
        self.channel_capacity = channel_capacity
        self.channel_overflow: ChannelOverflow = channel_overflow
        self.what_to_show = what
        self.use_rth = settings.use_rth if use_rth is None else bool(use_rth)
        self.contract_factory = contract_factory or contract_for  # instrument ids
        self.generic_ticks = generic_ticks
        self.backfill = backfill
        self.max_backfill_seconds = max_backfill_seconds
        self.backfill_timeout = backfill_timeout
        self.reconnect = reconnect
        self.read_chunk = read_chunk
        self.source = source
        stale = settings.stale_after if stale_after is None else float(stale_after)
        self.stale_after = stale
        self.resubscribe_after = 4 * stale if resubscribe_after is None else resubscribe_after
        self._market_open = market_open
        self._watchdog_enabled = watchdog
        self._watchdog: StalenessWatchdog | None = None
        # validate the thresholds now (the watchdog itself is built in start())
        StalenessWatchdog(self.stale_after, self.resubscribe_after, lambda now: True)
        # Equal jitter: never a burst of instant retries (a restarting gateway refuses
        # connections for a minute or two), and clients that lost the same gateway do not
        # come back in lockstep.
        self._backoff = RetryPolicy(
            initial_backoff=settings.reconnect_initial_backoff,
            max_backoff=settings.reconnect_max_backoff,
            multiplier=2,
            jitter="equal",
            rng=rng,
        )
        self._sleep = sleep
        self._clock = time.monotonic

        self._ib: Any = provider
        self._owns_connection = True
        self.host, self.port, self.client_id = settings.host, settings.port, settings.client_id
        self.state: State = "new"
        self.errors: deque[IBKRIssue] = deque(maxlen=200)
        self.unknown_symbols: list[str] = []
        self.backoff_delays: deque[float] = deque(maxlen=100)  # the delays actually waited
        self._symbols = {symbol: SymbolState(symbol) for symbol in self.symbols}
        for symbol, ts in (resume_after or {}).items():
            state = self._symbols.get(symbol.strip().upper())
            if state is not None and self.mode == "bars":
                state.last_ts = ts.astimezone(UTC)
        self._by_subscription: dict[int, SymbolState] = {}  # id(Ticker or bar list) -> state
        self._own_edge = False  # no runtime attached an edge: start() made one
        self._emit: Any = None  # the edge's emit (bound at start)
        self._paused = False  # socket reading paused: the channel is full
        self._resume_task: asyncio.Task[None] | None = None
        self._counts: Counter[str] = Counter()
        self._codes: Counter[int] = Counter()
        # req id -> the error IB reported for it: ib_async ends a failed request with an
        # empty result instead of raising (RaiseRequestErrors is off by default).
        self._request_errors: dict[int, str] = {}
        self._holding = False  # live bars held while a backfill runs
        # Backfill start for a symbol with no bar yet: just before the first subscription.
        self._bars_since: datetime | None = None
        self._farm_broken = False
        self._stopping = False
        self._disconnected = False
        self._resubscribe: dict[str, str] = {}  # symbol -> reason, pending
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._splitter: tuple[Any, Any, Any] | None = None
        self._warned_at: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, qualify and subscribe; then keep the stream alive in the background.

        Raises ``ProviderError`` (connection refused, duplicate client id, no handshake, no
        symbol qualified) after releasing everything it took."""
        if self.state != "new":
            raise ProviderError(f"{self!r} was already started: create a new source")
        self.state = "connecting"
        if self.edge is None:  # used on its own: the source's stream() reads its own channel
            channel: Channel[Record] = Channel(self.channel_capacity, self.channel_overflow)
            resample = self._requested if self._requested not in (None, "5s") else None
            self.edge = Edge(channel, resolution=resample, name=f"ibkr:{self.mode}")
            self._own_edge = True
        self._emit = self.edge.emit
        try:
            ib = self._ib
            if ib is None:
                ib = self._ib = self.lib.IB()
            self._attach(ib)
            if ib.isConnected():  # a connection the caller made: use it, leave it open
                self._owns_connection = False
                client = ib.client
                self.host, self.port, self.client_id = client.host, client.port, client.clientId
            else:
                await self._connect()
            await self._subscribe(initial=True)
            if self._watchdog_enabled:
                market_open = self._market_open
                if market_open is None:
                    market_open = await load_market_hours(self.settings.exchange_calendar)
                self._watchdog = StalenessWatchdog(
                    self.stale_after, self.resubscribe_after, market_open
                )
                self._watchdog.rearm(self.symbols, self._clock())
        except BaseException:
            await self._teardown()
            self.state = "failed"
            raise
        self.state = "streaming"
        self._tasks = [
            asyncio.create_task(self._supervise(), name=f"ibkr-supervisor-{self.client_id}"),
        ]
        if self._watchdog is not None:
            self._tasks.append(
                asyncio.create_task(self._watch(), name=f"ibkr-watchdog-{self.client_id}")
            )

    async def stop(self) -> None:
        """Cancel the subscriptions and disconnect within ``graceful_cancel_timeout``;
        ``stream()`` then ends once it has yielded what was received. Idempotent; a
        reconnect waiting in its backoff is abandoned."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(self.graceful_cancel_timeout):
                await self._teardown()
        except TimeoutError:
            logger.warning(
                "ibkr: stopping took longer than {}s; abandoned", self.graceful_cancel_timeout
            )
        if self.state != "failed":
            self.state = "stopped"
        logger.info("ibkr: {} stopped ({})", self._where(), self._summary())

    async def _teardown(self) -> None:
        """Stop the background tasks, cancel subscriptions, disconnect (if ours), detach.
        Bars held during a backfill are delivered first (a backfill cancelled here releases
        what it has)."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        try:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:  # synchronous from here: done even if stop()'s timeout cut the wait short
            ib = self._ib
            try:
                if ib is not None and ib.isConnected():
                    self._cancel_subscriptions(list(self._symbols.values()))
                    if self._owns_connection:
                        ib.disconnect()
            finally:
                if ib is not None:
                    self._detach(ib)
                if self._resume_task is not None:
                    self._resume_task.cancel()
                if self._own_edge and self.edge is not None:
                    self.edge.close()

    def _attach(self, ib: Any) -> None:
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnected
        if self.mode == "quotes":
            ib.pendingTickersEvent += self._on_tickers
        else:
            ib.barUpdateEvent += self._on_bar_update
        self._install_read_splitter(ib)

    def _detach(self, ib: Any) -> None:
        ib.errorEvent -= self._on_error
        ib.disconnectedEvent -= self._on_disconnected
        if self.mode == "quotes":
            ib.pendingTickersEvent -= self._on_tickers
        else:
            ib.barUpdateEvent -= self._on_bar_update
        if self._splitter is not None:
            conn, original, feed = self._splitter
            self._splitter = None
            conn.hasData -= feed
            conn.hasData += original
            _SPLIT.discard(id(conn.hasData))

    def _install_read_splitter(self, ib: Any) -> None:
        """Route socket reads through ``feed``, which hands them over in ``read_chunk``
        pieces (see the class docstring); skipped if ib_async's internals differ."""
        size = self.read_chunk
        client = getattr(ib, "client", None)
        conn = getattr(client, "conn", None)
        original = getattr(client, "_onSocketHasData", None)
        has_data = getattr(conn, "hasData", None)
        if size is None or original is None or has_data is None:
            return
        if id(has_data) in _SPLIT:  # (ib_insync's eventkit Event takes no new attributes)
            return  # another source on this IB already did it

        def feed(data: bytes) -> None:
            if len(data) <= size:
                original(data)
                return
            view = memoryview(data)
            for i in range(0, len(data), size):
                original(bytes(view[i : i + size]))

        has_data -= original
        has_data += feed
        _SPLIT.add(id(has_data))
        self._splitter = (conn, original, feed)

    # -- consuming ---------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[Record]:
        """The records until ``stop()``; raises ``ProviderError`` if the source failed.

        It reads the stream's channel (the runtime's consumer reads it directly). One
        consumer at a time (records are handed out once)."""
        if self.edge is None or self._emit is None:
            raise ProviderError("IBKRStreamSource.stream() called before start()")
        async for record in self.edge.channel.iter():
            yield record

    # -- observing ---------------------------------------------------------------------

    @property
    def ib(self) -> Any:
        """The ib_async ``IB`` in use (None before ``start()``), for diagnostics; changing its
        subscriptions behind the source's back is not supported."""
        return self._ib

    def stale_symbols(self) -> list[str]:
        """Symbols silent for ``stale_after`` seconds or more during market hours."""
        return sorted(self._watchdog.stale) if self._watchdog is not None else []

    def stats(self) -> dict[str, Any]:
        """Counters: connection events, resubscriptions, backfill, duplicates, staleness,
        errors by IB code, records received (at the edge) and invalid, read pauses."""
        c = self._counts
        edge = self.edge
        return {
            "state": self.state,
            "endpoint": self._where(),
            "mode": self.mode,
            "symbols": len(self.symbols),
            "subscribed": sum(1 for s in self._symbols.values() if s.subscription is not None),
            "unknown_symbols": list(self.unknown_symbols),
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
            "stale": self._watchdog.stale_events if self._watchdog is not None else 0,
            "stale_symbols": self.stale_symbols(),
            "errors_by_code": dict(self._codes),
            "messages_received": self._messages_received(),
            "received": edge.received if edge is not None else 0,
            "invalid": c["invalid"],
            "held": sum(len(s.held) for s in self._symbols.values()),
            "pauses": c["pauses"],
            "paused": self._paused,
        }

    def _messages_received(self) -> int:
        """TWS API messages received on the current connection (0 when not connected)."""
        try:
            return int(self._ib.client.connectionStats().numMsgRecv)
        except Exception:  # not connected (or no such statistic in this client version)
            return 0

    def _summary(self) -> str:
        c = self._counts
        received = self.edge.received if self.edge is not None else 0
        return (
            f"received {received}, invalid {c['invalid']}, read pauses {c['pauses']}, "
            f"reconnects {c['reconnects']}, resubscribes {c['resubscribes']}, "
            f"backfilled {c['backfilled_bars']}"
        )

    def _where(self) -> str:
        return f"{self.host}:{self.port} client {self.client_id}"

    def _issue(self, code: int | None, message: str, symbols: Iterable[str] = ()) -> None:
        self.errors.append(IBKRIssue(datetime.now(UTC), code, message, tuple(symbols)))

    def _warn_rarely(self, key: str, message: str, *args: Any) -> None:
        """Log a warning at most every ``_LOG_EVERY`` seconds per ``key``."""
        now = self._clock()
        if now - self._warned_at.get(key, -_INF) >= _LOG_EVERY:
            self._warned_at[key] = now
            logger.warning(message, *args)

    # -- connecting and subscribing ---------------------------------------------------------

    async def _connect(self) -> None:
        s = self.settings
        self._disconnected = False
        try:
            await connect_ib(
                self._ib, self.lib, host=self.host, port=self.port, client_id=self.client_id,
                timeout=s.connect_timeout, readonly=s.readonly, account=s.account,
            )  # fmt: skip
        except ProviderError:
            self._counts["connect_failures"] += 1
            raise
        self._counts["connects"] += 1
        if s.market_data_type != 1:
            self._ib.reqMarketDataType(s.market_data_type)
        logger.info("ibkr: connected to {} ({})", self._where(), self.lib.name)

    async def _qualify(self) -> list[SymbolState]:
        """Qualify every symbol; report the unknown ones together; return the known ones."""
        contracts = {symbol: self.contract_factory(symbol) for symbol in self.symbols}
        timeout = 2 * self.settings.connect_timeout + len(contracts) / 40
        try:
            async with asyncio.timeout(timeout):
                await self._ib.qualifyContractsAsync(*contracts.values())
        except TimeoutError:
            raise ProviderError(
                f"qualifying {len(contracts)} contract(s) at {self._where()} took longer "
                f"than {timeout:.0f}s"
            ) from None
        known: list[SymbolState] = []
        unknown: list[str] = []
        for symbol, contract in contracts.items():
            if getattr(contract, "conId", 0):
                state = self._symbols[symbol]
                state.contract = contract
                known.append(state)
            else:
                unknown.append(symbol)
        if unknown != self.unknown_symbols:
            self.unknown_symbols = unknown
            if unknown:
                message = (
                    f"{len(unknown)} unknown symbol(s) at {self._where()}: "
                    f"{', '.join(unknown)} (IB error 200, no security definition, e.g. for "
                    f"{contracts[unknown[0]]!r}); streaming the other {len(known)}: "
                    f"{', '.join(s.symbol for s in known)}"
                )
                logger.error("ibkr: {}", message)
                self._issue(200, message, unknown)
        if not known:
            raise ProviderError(
                f"none of the symbols {', '.join(self.symbols)} is known at {self._where()} "
                "(IB error 200, no security definition): check the symbols, or pass "
                "contract_factory= for other exchanges, currencies or security types"
            )
        return known

    async def _subscribe(self, initial: bool) -> None:
        """Qualify and subscribe every symbol on the current connection (after a reconnect
        the old subscriptions are dead: ib_async made new objects)."""
        self._by_subscription.clear()
        for state in self._symbols.values():
            state.subscription = None
        known = await self._qualify()
        if self.mode == "quotes":
            self._subscribe_quotes(known)
        else:
            resuming = any(s.last_ts is not None for s in known)
            coarser = self._requested not in (None, "5s")  # build the first window whole
            await self._subscribe_bars(known, backfill=not initial or resuming or coarser)
        if self._watchdog is not None:
            self._watchdog.rearm([s.symbol for s in known], self._clock())

    def _subscribe_quotes(self, states: list[SymbolState]) -> None:
        ib = self._ib
        for state in states:
            ticker = ib.reqMktData(state.contract, self.generic_ticks, False, False, [])
            state.subscription = ticker
            self._by_subscription[id(ticker)] = state

    async def _subscribe_bars(self, states: list[SymbolState], backfill: bool) -> None:
        """Subscribe real-time bars; with ``backfill``, hold the live bars, fetch each gap
        from history, then release both in time order (see the class docstring)."""
        ib = self._ib
        wanted = backfill and self.backfill
        self._holding = wanted  # live bars wait until the gaps are known (and filled)
        backfilled: list[Bar] = []
        try:
            for state in states:
                what = what_to_show_for(state.contract, self.what_to_show)  # FX: MIDPOINT
                bars = ib.reqRealTimeBars(state.contract, BAR_SECONDS, what, self.use_rth, [])
                state.subscription = bars
                self._by_subscription[id(bars)] = state
            if self.backfill and self._bars_since is None:
                await self._mark_first_subscription()
            gaps = [
                s for s in states if s.last_ts is not None or self._bars_since is not None
            ] if wanted else []  # fmt: skip
            if not gaps:
                return
            # Server time once the subscriptions are sent: live bars cover every bar from the
            # one in progress at this moment on; history fills the rest (complete bars only).
            try:
                async with asyncio.timeout(self.backfill_timeout):
                    server_now = await ib.reqCurrentTimeAsync()
            except TimeoutError:
                results: list[Any] = [TimeoutError("no server time from IB")] * len(gaps)
            else:
                results = await asyncio.gather(
                    *(self._fetch_gap(s, server_now) for s in gaps), return_exceptions=True
                )
            for state, result in zip(gaps, results, strict=True):
                if isinstance(result, BaseException):
                    self._counts["backfill_failures"] += 1
                    since = state.last_ts or self._bars_since
                    message = f"backfill of {state.symbol} since {since} failed: {result}"
                    logger.warning("ibkr: {}", message)
                    self._issue(None, message, [state.symbol])
                else:
                    backfilled.extend(result)
        finally:
            self._release_held(backfilled)

    async def _mark_first_subscription(self) -> None:
        """Note where the first subscription starts: a symbol's bars before its first live
        bar (the rest of the stream's first window, or an outage right after the start)
        are backfilled from there. One bar of margin, as the subscription and this request
        may straddle a boundary."""
        try:
            async with asyncio.timeout(self.backfill_timeout):
                server_now = await self._ib.reqCurrentTimeAsync()
        except (TimeoutError, ConnectionError, OSError) as exc:
            logger.warning("ibkr: server time not known ({}): no backfill before a first bar", exc)
            return
        # From the start of the stream's window that held the bar before the one in progress
        # (a coarser first bar is then built whole from history; for 5-second bars, one bar
        # of margin). ``_fetch_gap`` takes the bars after ``_bars_since``.
        window = resolution_seconds(self._requested or "5s")
        before = server_now.timestamp() - 2 * BAR_SECONDS
        start = math.floor(before / window) * window - BAR_SECONDS
        self._bars_since = datetime.fromtimestamp(start, UTC)

    async def _fetch_gap(self, state: SymbolState, server_now: datetime) -> list[Bar]:
        """Complete 5-second bars after ``state.last_ts`` (or, before the symbol's first bar,
        after the first subscription) that end by ``server_now``."""
        since = state.last_ts if state.last_ts is not None else self._bars_since
        assert since is not None
        complete_until = server_now - timedelta(seconds=BAR_SECONDS)  # last complete start
        if complete_until <= since:
            return []
        gap = (server_now - since).total_seconds()
        seconds = math.ceil(gap) + _BACKFILL_MARGIN
        if seconds > self.max_backfill_seconds:
            message = (
                f"{state.symbol}: {gap:.0f}s of bars missed; backfilling only the last "
                f"{self.max_backfill_seconds}s (max_backfill_seconds)"
            )
            logger.warning("ibkr: {}", message)
            self._issue(None, message, [state.symbol])
            seconds = self.max_backfill_seconds
        self._counts["backfill_requests"] += 1
        # Our own timeout: ib_async's returns an empty result on timeout, which would look
        # like "nothing was missed"; a request error does the same (checked below).
        async with asyncio.timeout(self.backfill_timeout):
            history = await self._ib.reqHistoricalDataAsync(
                state.contract, endDateTime="", durationStr=f"{seconds} S",
                barSizeSetting="5 secs", useRTH=self.use_rth,
                whatToShow=what_to_show_for(state.contract, self.what_to_show),
                formatDate=2, timeout=0,
            )  # fmt: skip
        error = self._request_errors.pop(getattr(history, "reqId", -1), None)
        if error is not None:
            raise ProviderError(f"historical data request refused: {error}")
        bars = []
        edge = self.edge
        assert edge is not None
        for item in history or ():
            if not isinstance(item.date, datetime):
                continue  # a daily bar (a date): not one of the 5-second bars asked for
            try:
                bar = bar_from_history(state.symbol, item, self.source)
            except (TypeError, ValueError) as exc:
                edge.receive()
                self._invalid(state.symbol, exc)  # one bad bar: counted, the gap goes on
                continue
            if since < bar.ts <= complete_until:
                edge.receive()  # history is received too: counted before it can be dropped
                bars.append(bar)
        logger.info("ibkr: backfilled {} bar(s) of {} after {}", len(bars), state.symbol, since)
        return bars

    def _release_held(self, backfilled: list[Bar]) -> None:
        """Deliver the backfilled and the held live bars in time order (duplicates are
        dropped, counted). All of them were counted as received when they arrived."""
        merged: list[tuple[datetime, bool, Bar]] = [(b.ts, False, b) for b in backfilled]
        for state in self._symbols.values():
            merged.extend((b.ts, True, b) for b in state.held)
            state.held = []
        self._holding = False
        merged.sort(key=lambda item: (item[0], item[1]))  # history first on equal times
        for _, live, bar in merged:
            if self._deliver_bar(self._symbols[bar.symbol], bar) and not live:
                self._counts["backfilled_bars"] += 1

    def _cancel_subscriptions(self, states: list[SymbolState]) -> None:
        ib = self._ib
        for state in states:
            sub, state.subscription = state.subscription, None
            if sub is None:
                continue
            self._by_subscription.pop(id(sub), None)
            try:
                if self.mode == "quotes":
                    ib.cancelMktData(state.contract)
                else:
                    ib.cancelRealTimeBars(sub)
            except Exception as exc:  # the connection may be going away
                logger.debug("ibkr: cancelling {} failed: {}", state.symbol, exc)

    async def _resubscribe_now(self, reasons: dict[str, str]) -> None:
        """Re-request the data of ``reasons``' symbols on the current connection."""
        states = [
            self._symbols[s] for s in reasons if self._symbols[s].contract is not None
        ]  # fmt: skip
        if not states or not self._ib.isConnected():
            return
        why = sorted(set(reasons.values()))
        logger.warning(
            "ibkr: resubscribing {} symbol(s) ({}): {}",
            len(states), ", ".join(why), ",".join(s.symbol for s in states),
        )  # fmt: skip
        self._cancel_subscriptions(states)
        self._counts["resubscribes"] += 1
        if self.mode == "quotes":
            self._subscribe_quotes(states)
        else:
            await self._subscribe_bars(states, backfill=True)

    # -- keeping it alive -----------------------------------------------------------------

    async def _supervise(self) -> None:
        """Reconnect after a disconnect; resubscribe when asked (1101, 2104, watchdog)."""
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                if self._disconnected:
                    if not self.reconnect:
                        raise ProviderError(f"connection to {self._where()} lost")
                    await self._reconnect()
                elif self._resubscribe:
                    reasons, self._resubscribe = self._resubscribe, {}
                    try:
                        await self._resubscribe_now(reasons)
                    except (ConnectionError, OSError) as exc:
                        logger.warning("ibkr: resubscription interrupted: {}", exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    async def _reconnect(self) -> None:
        """Back off, connect, re-qualify, resubscribe (and backfill); until done or stopped."""
        self.state = "reconnecting"
        attempt = 0
        while not self._stopping:
            attempt += 1
            delay = self._backoff.backoff(attempt)
            self.backoff_delays.append(delay)
            logger.info(
                "ibkr: reconnecting to {} in {:.2f}s (attempt {})", self._where(), delay, attempt
            )
            await self._sleep(delay)
            if self._stopping:
                return
            try:
                await self._connect()
                await self._subscribe(initial=False)
            except (ProviderError, ConnectionError, OSError, TimeoutError) as exc:
                logger.warning("ibkr: reconnect attempt {} failed: {}", attempt, exc)
                if self._ib.isConnected():
                    self._ib.disconnect()
                self._disconnected = True
                continue
            if self._disconnected or not self._ib.isConnected():
                continue  # lost again while resubscribing
            self._counts["reconnects"] += 1
            self._resubscribe.clear()  # everything was just subscribed afresh
            self.state = "streaming"
            logger.info("ibkr: reconnected to {} after {} attempt(s)", self._where(), attempt)
            return

    def _fail(self, exc: Exception) -> None:
        self.state = "failed"
        error = exc if isinstance(exc, ProviderError) else ProviderError(
            f"ibkr source at {self._where()} failed: {type(exc).__name__}: {exc}"
        )  # fmt: skip
        logger.error("ibkr: {}", error)
        self._issue(None, str(error))
        if self.edge is not None:
            self.edge.close(error)

    async def _watch(self) -> None:
        """Check for silent symbols a few times per ``stale_after``."""
        watchdog = self._watchdog
        assert watchdog is not None
        interval = max(0.05, min(1.0, self.stale_after / 4))
        while not self._stopping:
            await asyncio.sleep(interval)
            if self.state != "streaming" or self._holding or self._paused:
                continue
            last = {s.symbol: s.updated for s in self._symbols.values() if s.subscription}
            verdict = watchdog.check(last, self._clock())
            if verdict.newly_stale:
                message = (
                    f"no data for {self.stale_after:g}s during market hours from "
                    f"{', '.join(verdict.newly_stale)} ({self._where()}): stale"
                )
                logger.warning("ibkr: {}", message)
                self._issue(None, message, verdict.newly_stale)
            if verdict.recovered:
                logger.info("ibkr: data flows again for {}", ", ".join(verdict.recovered))
            if verdict.resubscribe:
                self._request_resubscribe(verdict.resubscribe, "stale")

    def _request_resubscribe(self, symbols: Iterable[str], reason: str) -> None:
        for symbol in symbols:
            self._resubscribe.setdefault(symbol, reason)
        self._wake.set()

    # -- ib_async callbacks (synchronous, on the event loop) ---------------------------------

    def _on_disconnected(self) -> None:
        if self._stopping or self._disconnected:
            return
        self._disconnected = True
        if self.state == "streaming":
            self._counts["disconnects"] += 1
            logger.warning("ibkr: disconnected from {}", self._where())
        self._wake.set()

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        self._codes[code] += 1
        if req_id is not None and req_id >= 0 and len(self._request_errors) < 10_000:
            self._request_errors[req_id] = f"IB error {code}: {message}"
        if code == 1100:
            logger.warning("ibkr: IB error 1100 at {}: {}", self._where(), message)
            self._issue(code, message)
        elif code == 1101:
            logger.warning("ibkr: IB error 1101 (data lost) at {}: resubscribing", self._where())
            self._request_resubscribe(self._symbols, "1101")
        elif code == 1102:
            logger.info("ibkr: IB connectivity restored, data maintained (1102)")
            if self.mode == "bars":
                # The subscriptions survived, but no bar came while the link was down (1100):
                # resubscribing backfills that gap from history, as after 1101.
                self._request_resubscribe(self._symbols, "1102 after 1100")
        elif code == 2103:
            self._farm_broken = True
            logger.warning("ibkr: market data farm broken (2103): {}", message)
        elif code == 2104 and self._farm_broken:
            self._farm_broken = False
            if self.mode == "bars":
                self._request_resubscribe(self._symbols, "2104 after 2103")
        elif code in _QUIET_CODES:
            logger.debug("ibkr: IB notice {}: {}", code, message)
        else:
            symbol = getattr(contract, "symbol", None) or self._symbol_of(req_id)
            symbols = [symbol] if symbol else []
            where = f" for {symbol}" if symbol else ""
            level = "WARNING" if code in _WARNING_CODES or 2100 <= code < 2200 else "ERROR"
            logger.log(level, "ibkr: IB {} {}{} at {}: {}", level.lower(), code, where,
                       self._where(), message)  # fmt: skip
            self._issue(code, message, symbols)

    def _symbol_of(self, req_id: int) -> str | None:
        if req_id is None or req_id < 0:
            return None
        wrapper = getattr(self._ib, "wrapper", None)
        ticker = getattr(wrapper, "reqId2Ticker", {}).get(req_id)
        sub = ticker if ticker is not None else getattr(wrapper, "reqId2Subscriber", {}).get(req_id)
        state = self._by_subscription.get(id(sub)) if sub is not None else None
        return state.symbol if state is not None else None

    def _on_tickers(self, tickers: Iterable[Any]) -> None:
        """One Quote per updated ticker (hot path: runs for every TCP read)."""
        by_sub = self._by_subscription
        now = self._clock()
        source = self.source
        emit = self._emit
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
                self.edge.receive()  # type: ignore[union-attr]
                self._invalid(state.symbol, exc)
                continue
            state.last_ts = ts
            state.last_values = values
            room = emit(quote) and room
        if not room:
            self._pause()

    def _on_bar_update(self, bars: Any, has_new_bar: bool) -> None:
        """A new 5-second bar: copy it, count it, trim ib_async's list, deliver (or hold)."""
        if not has_new_bar:
            return
        state = self._by_subscription.get(id(bars))
        if state is None:
            return
        state.updated = self._clock()
        latest = bars[-1]
        if len(bars) > 1:
            del bars[:-1]  # ib_async's list grows forever otherwise
        edge = self.edge
        assert edge is not None
        edge.receive()
        try:
            bar = bar_from_realtime(state.symbol, latest, self.source)
        except (TypeError, ValueError) as exc:
            self._invalid(state.symbol, exc)
            return
        if self._holding:
            state.held.append(bar)
        else:
            self._deliver_bar(state, bar)

    def _deliver_bar(self, state: SymbolState, bar: Bar) -> bool:
        """Deliver a received ``bar`` unless a bar of that start (or later) was delivered
        already (then it is dropped as a duplicate, counted); False if it was dropped."""
        edge = self.edge
        assert edge is not None
        if state.last_ts is not None and bar.ts <= state.last_ts:
            edge.drop("duplicate")
            self._counts["duplicates_dropped"] += 1
            return False
        state.last_ts = bar.ts
        if not edge.deliver(bar):
            self._pause()
        return True

    # -- backpressure ------------------------------------------------------------------------

    def _pause(self) -> None:
        """The channel is full: stop reading the socket until the consumer made room (TCP
        then holds the gateway back). What ib_async already read is still delivered."""
        if self._paused or self._stopping:
            return
        transport = getattr(getattr(getattr(self._ib, "client", None), "conn", None),
                            "transport", None)  # fmt: skip
        if transport is None:
            return
        transport.pause_reading()
        self._paused = True
        self._counts["pauses"] += 1
        self._warn_rarely(
            "paused",
            "ibkr: the consumer is slower than {}: reading paused until it catches up "
            "({} pause(s) so far)",
            self._where(), self._counts["pauses"],
        )  # fmt: skip
        self._resume_task = asyncio.create_task(self._resume_when_room(transport))

    async def _resume_when_room(self, transport: Any) -> None:
        edge = self.edge
        assert edge is not None
        await edge.wait_for_room()
        self._paused = False
        if self._watchdog is not None:  # silence while paused was ours, not the feed's
            self._watchdog.rearm(self.symbols, self._clock())
        if not transport.is_closing():
            transport.resume_reading()

    def _invalid(self, symbol: str, exc: Exception) -> None:
        """A received update that cannot become a record: dropped as ``invalid``, counted."""
        assert self.edge is not None
        self.edge.drop("invalid")
        self._counts["invalid"] += 1
        self._warn_rarely(
            "invalid", "ibkr: invalid data for {} left out ({} so far): {}",
            symbol, self._counts["invalid"], exc,
        )  # fmt: skip
