"""``SimulatedGateway``: an asyncio TCP server that real TWS API clients (ib_async) talk to.

It speaks the text protocol up to server version 178: the handshake, startApi, answers to
every startup request, contract details, streaming ticks, 5-second real-time bars and
historical bars (with keepUpToDate), all from deterministic market models
(``mdp_core.gateway.market``) on a simulated clock. It records requests and what it sent,
counts everything per symbol, and injects faults: dropped sockets, restarts with a refused
window, connectivity errors (1100/1101/1102), farm notices, paused data, pacing
violations, stalls and ignored requests.

The server owns the listening socket, the sessions, the data pump and the fault API; what
the sessions share (instruments, clock, limits, switches, records, counters) is its
``GatewayState`` (``state``). Per-connection work lives in ``session``, request handlers in
``handlers``, the streaming in ``client`` and ``pump``, the text commands in ``control``.

Usage::

    async with SimulatedGateway(symbols=["AAPL", "MSFT"], port=0, seed=1,
                                time_compression=60.0) as gw:
        ib = IB(); await ib.connectAsync("127.0.0.1", gw.port, clientId=1)
        ...
        gw.bars_between("AAPL", start, end)   # exactly the bars that exist in that period
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast, overload

from mdp_core.gateway.codec import MAX_FRAME_BYTES
from mdp_core.gateway.control import CONTROL_HELP, run_command
from mdp_core.gateway.instruments import Instrument, model_params
from mdp_core.gateway.market import MarketModel, ReplayModel, SimBar, SimClock, SimTick
from mdp_core.gateway.protocol import ERROR_TEXTS, MAX_SERVER_VERSION, error_msg
from mdp_core.gateway.pump import Pump
from mdp_core.gateway.random_walk import RandomWalkModel
from mdp_core.gateway.records import RecordedRequest, SentBar, SentTick, SessionInfo
from mdp_core.gateway.session import Session
from mdp_core.gateway.state import GatewayState
from mdp_core.instruments import parse_instrument
from mdp_core.logs import logger
from mdp_core.providers.base import normalize_symbols
from mdp_core.providers.ibkr.pacing import PacingLedger, PacingRules

__all__ = [
    "CONTROL_HELP",
    "RecordedRequest",
    "SentBar",
    "SentTick",
    "SessionInfo",
    "SimulatedGateway",
]


T = TypeVar("T")


class _Shared(Generic[T]):
    """An attribute of ``SimulatedGateway`` kept in its ``state`` under the same name, read
    and written through, so the Python API keeps the names it always had."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, gw: None, owner: type) -> Self: ...
    @overload
    def __get__(self, gw: SimulatedGateway, owner: type) -> T: ...
    def __get__(self, gw: SimulatedGateway | None, owner: type) -> Self | T:
        if gw is None:
            return self
        return cast(T, getattr(gw.state, self.name))

    def __set__(self, gw: SimulatedGateway, value: T) -> None:
        setattr(gw.state, self.name, value)


class SimulatedGateway:
    """A simulated IB Gateway for real TWS API clients, on ``host:port`` (127.0.0.1 default).

    Args:
        symbols: instruments streamed from seeded random walks, by instrument id
            (``mdp_core.instruments``): stocks (``"AAPL,MSFT"`` works too), FX
            (``EUR:CASH:IDEALPRO:USD``: quotes only, no TRADES), futures
            (``ES:FUT:CME:USD:202503``), continuous futures (``ES:CONTFUT:CME``) and indices
            (``SPX:IND:CBOE``). They trade around the clock; historical requests with
            useRTH keep the bars of their exchange's regular sessions (exchange_calendars).
        port: TCP port; 0 picks a free one (read ``gw.port`` after ``start()``).
        seed: seed of every model; same seed and configuration -> same bars and ticks.
        time_compression: simulated seconds per real second (60: a simulated minute per second).
        start: simulated time at start (datetime or epoch); default: the current time.
        clock: real monotonic clock in seconds, injectable to control time.
        replay: 1-minute bar files to replay, as paths (symbol from the file name prefix,
            ``SPY_1min_2011-01.csv`` -> SPY) or a ``{symbol: path}`` mapping. Each file starts
            at the simulated start time and loops; a ``start`` inside the file's span replays
            it at its own timestamps.
        delayed_symbols: symbols without live permission: they stream delayed ticks + 10167.
        accounts: managed accounts (non-empty).
        max_lines: market-data lines per connection (market data + real-time bars);
            error 101 past it.
        tick_interval: real seconds between data pumps.
        trades_per_bar: inclusive range of trades (tick bursts) per 5-second bar.
        pacing_limit: requests per second per connection above which error 100 is sent (None: off).
        max_history_bars: largest historical request, in 5-second bars (the default, about
            400 days, covers IB's largest request, 1 Y of daily bars); larger ones get error
            162. Bars are computed on the event loop (a month of 5-second bars in about 0.5 s).
        history_pacing: IB's historical-data pacing rules (``PacingRules``; its defaults are
            IB's), enforced across all clients with error 162 "pacing violation"; None: off.
        history_pacing_scale: multiplies the rules' windows (0.01: 10 minutes become 6 s).

    Python API: ``start()``/``stop()`` (or ``async with``); ``port``; ``now()``;
    ``bars_between(symbol, start, end)``/``ticks_between``; ``stats()``; ``requests``,
    ``sent_ticks``, ``sent_bars``, ``sessions()``, ``wait_pumps(n)``; faults ``drop_all()``,
    ``restart(downtime)``, ``stop_listening()``/``start_listening()``,
    ``broadcast_error(code, msg)``, ``pause_data(flag)``, ``connectivity_lost()``,
    ``connectivity_restored(data_lost)``, ``pacing_violation()``, ``stall(flag)``,
    ``ignored_requests``; ``control(command)`` for the text commands of ``mdp gateway``;
    ``state``, the ``GatewayState`` its sessions share (the attributes above that hold
    configuration, records and switches are its attributes, read and written through).
    """

    def __init__(
        self,
        symbols: str | Iterable[str] = ("AAPL",),
        *,
        host: str = "127.0.0.1",
        port: int = 4002,
        seed: int = 1,
        time_compression: float = 1.0,
        start: float | datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
        replay: Mapping[str, str | Path] | Iterable[str | Path] = (),
        delayed_symbols: Iterable[str] = (),
        accounts: Iterable[str] = ("DU1234567",),
        max_lines: int = 100,
        tick_interval: float = 0.05,
        trades_per_bar: tuple[int, int] = (1, 8),
        volatility: float = 0.02,
        pacing_limit: int | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_write_buffer: int = 64 * 1024 * 1024,
        max_history_bars: int = 7_000_000,
        history_pacing: PacingRules | None = PacingRules(),
        history_pacing_scale: float = 1.0,
        log_size: int = 10_000,
    ) -> None:
        self.host = host
        self.port = port
        self.seed = seed
        self.state = GatewayState(
            SimClock(start, time_compression, clock),
            real_clock=clock,
            accounts=accounts,
            max_lines=max_lines,
            pacing_limit=pacing_limit,
            max_frame_bytes=max_frame_bytes,
            max_write_buffer=max_write_buffer,
            max_history_bars=max_history_bars,
            log_size=log_size,
        )
        self._sessions: set[Session] = set()  # each with its task, from connect to its end
        self._pump = Pump(self.state, self._sessions, tick_interval)
        if history_pacing is not None:
            self.state.history_pacing = PacingLedger(history_pacing.scaled(history_pacing_scale))
        self._add_models(symbols, replay, delayed_symbols, seed, volatility, trades_per_bar)
        self._server: asyncio.Server | None = None
        self._listening_changed: asyncio.Condition | None = None

    def _add_models(
        self,
        symbols: str | Iterable[str],
        replay: Mapping[str, str | Path] | Iterable[str | Path],
        delayed_symbols: Iterable[str],
        seed: int,
        volatility: float,
        trades_per_bar: tuple[int, int],
    ) -> None:
        """A random walk per symbol and a replay per file; ValueError if there is none."""
        delayed = set(normalize_symbols(delayed_symbols)) if delayed_symbols else set()
        for symbol in normalize_symbols(symbols) if symbols else []:
            params = model_params(parse_instrument(symbol))
            model = RandomWalkModel(
                symbol, seed, volatility=volatility, trades_per_bar=trades_per_bar, **params
            )
            self.add_instrument(model, live=symbol not in delayed)
        items: Iterable[tuple[str | None, str | Path]] = (
            replay.items() if isinstance(replay, Mapping) else ((None, p) for p in replay)
        )
        for name, path in items:
            replay_model = ReplayModel.from_file(
                path, self.clock.start, name.upper() if name else None, seed,
                trades_per_bar=trades_per_bar,
            )  # fmt: skip
            self.add_instrument(replay_model, live=replay_model.symbol not in delayed)
        if not self.state.instruments:
            raise ValueError("no symbols: expected symbols and/or replay files")

    # ---- the shared state under the attribute names of the Python API --------------------

    clock = _Shared[SimClock]()
    accounts = _Shared[list[str]]()
    max_lines = _Shared[int]()
    pacing_limit = _Shared[int | None]()
    max_frame_bytes = _Shared[int]()
    max_write_buffer = _Shared[int]()
    max_history_bars = _Shared[int]()
    history_pacing = _Shared[PacingLedger | None]()
    requests = _Shared[deque[RecordedRequest]]()
    sent_ticks = _Shared[deque[SentTick]]()
    sent_bars = _Shared[deque[SentBar]]()
    ignored_requests = _Shared[set[int]]()  # msg ids recorded but not answered (a fault)
    data_paused = _Shared[bool]()  # see pause_data()

    @property
    def tick_interval(self) -> float:
        return self._pump.tick_interval

    @tick_interval.setter
    def tick_interval(self, seconds: float) -> None:
        self._pump.tick_interval = seconds

    # ---- instruments and time ------------------------------------------------------------

    def add_instrument(self, model: MarketModel, live: bool = True) -> Instrument:
        """Serve ``model.symbol`` from ``model`` (replacing an existing one of that symbol)."""
        return self.state.add_instrument(model, live)

    @property
    def symbols(self) -> list[str]:
        return self.state.symbols

    def instrument(self, symbol: str) -> Instrument:
        """The instrument of ``symbol`` (an instrument id, any spelling); KeyError naming the
        known ones otherwise."""
        return self.state.instrument(symbol)

    def model(self, symbol: str) -> MarketModel:
        return self.instrument(symbol).model

    def now(self) -> float:
        """Current simulated time, epoch seconds."""
        return self.state.now()

    def real_time(self) -> float:
        """The real monotonic clock (pacing is in real time, not simulated time)."""
        return self.state.real_time()

    def bars_between(
        self,
        symbol: str,
        start: float | datetime,
        end: float | datetime,
        what_to_show: str = "TRADES",
    ) -> list[SimBar]:
        """Every 5-second bar of ``symbol`` starting in ``[start, end)``: the bars the gateway
        streams live and serves historically for that period, no more, no less."""
        return self.model(symbol).bars_between(start, end, what_to_show)

    def ticks_between(
        self, symbol: str, start: float | datetime, end: float | datetime
    ) -> list[SimTick]:
        """Every tick of ``symbol`` with time in ``[start, end)``."""
        return self.model(symbol).ticks_between(start, end)

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen and start streaming. ``port`` holds the bound port afterwards."""
        await self.start_listening()
        self._pump.start()
        logger.info(
            f"gateway: simulated IB Gateway on {self.host}:{self.port}, symbols {self.symbols}, "
            f"server version {MAX_SERVER_VERSION}, time compression {self.clock.time_compression}"
        )

    async def stop(self) -> None:
        """Close every session and stop listening and streaming (idempotent)."""
        await self.stop_listening()
        await self._pump.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start_listening(self) -> None:
        """Accept connections again on the same host and port."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        await self._notify_listening()

    async def stop_listening(self) -> None:
        """Stop accepting (connections are refused) and drop every session."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._abort_sessions()
        tasks = [s.task for s in self._sessions if s.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        await server.wait_closed()
        await self._notify_listening()

    async def wait_listening(self, listening: bool = True) -> None:
        """Wait until the gateway is (or is not) accepting connections."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.listening == listening)

    def _condition(self) -> asyncio.Condition:
        if self._listening_changed is None:
            self._listening_changed = asyncio.Condition()
        return self._listening_changed

    async def _notify_listening(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self.state, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        session.task = task
        self._sessions.add(session)
        self.state.count("connections")
        try:
            await session.run()
        except asyncio.CancelledError:
            pass  # loop shutdown: end quietly instead of "Task exception was never retrieved"
        except Exception:
            logger.exception(f"gateway: {session} failed; closing it")
        finally:
            session.close()
            self._sessions.discard(session)

    async def wait_pumps(self, n: int = 1) -> None:
        """Wait until the data pump has run ``n`` more times; each run writes everything due
        up to that moment (or skips it while data is paused). Needs a started gateway."""
        await self._pump.wait(n)

    # ---- introspection -------------------------------------------------------------------

    def sessions(self) -> list[SessionInfo]:
        """The sessions that completed startApi."""
        return [s.info() for s in self._sessions if s.started and not s.closed]

    def requests_for(self, msg_id: int, client_id: int | None = None) -> list[RecordedRequest]:
        """Recorded requests with ``msg_id`` (from ``client_id`` if given)."""
        return [
            r for r in self.requests
            if r.msg_id == msg_id and (client_id is None or r.client_id == client_id)
        ]  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Counters: per symbol ``ticks`` (tick bursts), ``tick_messages``, ``bars`` (real-time),
        ``history_bars``, ``history_updates``; their ``totals``; and gateway events
        (connections, sessions, faults, ``error_<code>`` sent in replies)."""
        per_symbol = {s: dict(c) for s, c in self.state.symbol_stats.items()}
        totals: Counter[str] = Counter()
        for c in self.state.symbol_stats.values():
            totals.update(c)
        return {
            "sim_time": self.now(),
            "listening": self.listening,
            "sessions": len(self.sessions()),
            "data_paused": self.data_paused,
            "stalled": self.state.stalled,
            "events": dict(self.state.counters),
            "totals": dict(totals),
            "symbols": per_symbol,
        }

    # ---- faults --------------------------------------------------------------------------

    def drop_all(self) -> int:
        """Close every client socket at once (clients see the connection drop). Returns how many."""
        live = [s for s in self._sessions if not s.closed]
        if live:
            logger.warning(f"gateway: fault: dropping {len(live)} client connection(s)")
        self.state.count("drops", len(live))
        return self._abort_sessions()

    def _abort_sessions(self) -> int:
        live = [s for s in self._sessions if not s.closed]
        for session in live:
            session.abort()
            if session.task is not None:
                session.task.cancel()  # also ends a session waiting on a stall
        return len(live)

    async def restart(self, downtime: float) -> None:
        """Simulate a gateway restart: drop sessions, refuse connections for ``downtime``
        real seconds, then listen again on the same port. Simulated time keeps running."""
        logger.warning(f"gateway: fault: restarting, down for {downtime}s")
        self.state.count("restarts")
        await self.stop_listening()
        await asyncio.sleep(downtime)
        await self.start_listening()
        logger.info(f"gateway: listening again on {self.host}:{self.port}")

    def broadcast_error(self, code: int, msg: str | None = None, req_id: int = -1) -> int:
        """Send error ``code`` (standard text unless ``msg``) to every started session."""
        text = msg if msg is not None else ERROR_TEXTS.get(code, f"Simulated error {code}")
        logger.warning(f"gateway: fault: broadcasting error {code} {text!r}")
        sent = 0
        for session in list(self._sessions):
            if session.started and session.write([error_msg(req_id, code, text)]):
                sent += 1
        self.state.count(f"broadcast_{code}")
        return sent

    def pause_data(self, paused: bool = True) -> None:
        """Stop (True) or restart (False) all data on open sockets; nothing is sent for the
        paused period, like a lost IB link (1100)."""
        if paused != self.state.data_paused:
            logger.warning(f"gateway: fault: data {'paused' if paused else 'resumed'}")
        self.state.data_paused = paused

    def connectivity_lost(self) -> None:
        """Error 1100 to every client and data paused; sockets stay up."""
        self.pause_data(True)
        self.broadcast_error(1100)

    def connectivity_restored(self, data_lost: bool = False) -> None:
        """Data resumes with 1102 (subscriptions kept) or 1101 (every subscription dropped:
        clients must resubscribe)."""
        if data_lost:
            for session in self._sessions:
                session.clear_subscriptions()
        self.pause_data(False)
        self.broadcast_error(1101 if data_lost else 1102)

    def pacing_violation(self) -> int:
        """Error 100 (max message rate exceeded) to every client."""
        return self.broadcast_error(100)

    def stall(self, stalled: bool = True) -> None:
        """Stop (True) answering requests and sending data while keeping sockets open."""
        logger.warning(f"gateway: fault: {'stalled' if stalled else 'unstalled'}")
        if stalled:
            self.state.unstalled.clear()
        else:
            self.state.unstalled.set()

    async def control(self, command: str) -> str:
        """Run one text command (see ``CONTROL_HELP``); returns a line to show the user.

        Raises ``ValueError`` naming the command and the expected forms if it is invalid."""
        return await run_command(self, command)
