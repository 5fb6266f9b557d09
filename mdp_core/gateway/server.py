"""``SimulatedGateway``: an asyncio TCP server that real TWS API clients (ib_async) talk to.

It speaks the text protocol up to server version 178: the handshake, startApi, answers to
every startup request, contract details, streaming ticks, 5-second real-time bars and
historical bars (with keepUpToDate), all from deterministic market models
(``mdp_core.gateway.market``) on a simulated clock. It records requests and what it sent,
counts everything per symbol, and injects faults: dropped sockets, restarts with a refused
window, connectivity errors (1100/1101/1102), farm notices, paused data, pacing
violations, stalls and ignored requests. Per-connection work lives in ``session``.

Usage::

    async with SimulatedGateway(symbols=["AAPL", "MSFT"], port=0, seed=1,
                                time_compression=60.0) as gw:
        ib = IB(); await ib.connectAsync("127.0.0.1", gw.port, clientId=1)
        ...
        gw.bars_between("AAPL", start, end)   # exactly the bars that exist in that period
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mdp_core.gateway.codec import MAX_FRAME_BYTES
from mdp_core.gateway.instruments import Instrument, con_id_for, model_params
from mdp_core.gateway.market import (
    MarketModel,
    ReplayModel,
    SimBar,
    SimClock,
    SimTick,
)
from mdp_core.gateway.protocol import ERROR_TEXTS, MAX_SERVER_VERSION, ContractSpec, error_msg
from mdp_core.gateway.random_walk import RandomWalkModel
from mdp_core.gateway.session import RecordedRequest, SentBar, SentTick, Session, SessionInfo
from mdp_core.instruments import canonical_id, parse_instrument
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

#: Control commands understood by ``SimulatedGateway.control`` (and ``mdp gateway`` on stdin).
CONTROL_HELP = """\
  status                 sessions, subscriptions and counters
  drop                   close every client socket (drop_all)
  restart SECONDS        stop listening, refuse connections for SECONDS, listen again
  error CODE [TEXT]      send error CODE to every client (1100 1101 1102 2103 2104 2105 2106 ...)
  lost                   connectivity lost: error 1100 and data paused (socket stays up)
  restored [kept|lost]   1102 data kept (default) or 1101 data lost (subscriptions dropped)
  pause / resume         stop / restart data on open sockets, no error sent
  pacing                 send error 100 (max message rate exceeded) to every client
  stall / unstall        stop answering requests and sending data / go on
  help                   this list"""


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
    ``ignored_requests``; ``control(command)`` for the text commands of ``mdp gateway``.
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
        self.clock = SimClock(start, time_compression, clock)
        self.accounts = [a for a in accounts if a]
        if not self.accounts:
            raise ValueError(
                "accounts is empty: expected at least one account (ib_async needs one)"
            )
        if max_lines < 1:
            raise ValueError(f"invalid max_lines {max_lines!r}: expected >= 1")
        if not tick_interval > 0:
            raise ValueError(f"invalid tick_interval {tick_interval!r}: expected seconds > 0")
        self.max_lines = max_lines
        self.tick_interval = tick_interval
        self.pacing_limit = pacing_limit
        self.max_frame_bytes = max_frame_bytes
        self.max_write_buffer = max_write_buffer
        self.max_history_bars = max_history_bars
        self.history_pacing: PacingLedger | None = (
            PacingLedger(history_pacing.scaled(history_pacing_scale))
            if history_pacing is not None
            else None
        )
        self._real_clock = clock
        self.ignored_requests: set[int] = set()
        self.requests: deque[RecordedRequest] = deque(maxlen=log_size)
        self.sent_ticks: deque[SentTick] = deque(maxlen=log_size)
        self.sent_bars: deque[SentBar] = deque(maxlen=log_size)
        self.data_paused = False

        self._instruments: dict[str, Instrument] = {}
        self._symbol_stats: dict[str, Counter[str]] = {}
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
        if not self._instruments:
            raise ValueError("no symbols: expected symbols and/or replay files")

        self._sessions: set[Session] = set()  # each with its task, from connect to its end
        self._server: asyncio.Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        self._listening_changed: asyncio.Condition | None = None
        self._counters: Counter[str] = Counter()
        self._pumps = 0
        self._pump_waiters: list[tuple[int, asyncio.Future[None]]] = []

    # ---- configuration -------------------------------------------------------------------

    def add_instrument(self, model: MarketModel, live: bool = True) -> Instrument:
        """Serve ``model.symbol`` from ``model`` (replacing an existing one of that symbol)."""
        con_id = con_id_for(model.symbol)
        clash = [
            i for i in self._instruments.values() if i.con_id == con_id and i.symbol != model.symbol
        ]
        if clash:
            raise ValueError(f"conId {con_id} of {model.symbol} clashes with {clash[0].symbol}")
        inst = Instrument(model.symbol, con_id, model, live)
        self._instruments[model.symbol] = inst
        self._symbol_stats.setdefault(model.symbol, Counter())
        return inst

    @property
    def symbols(self) -> list[str]:
        return list(self._instruments)

    def instrument(self, symbol: str) -> Instrument:
        """The instrument of ``symbol`` (an instrument id, any spelling); KeyError naming the
        known ones otherwise."""
        try:
            return self._instruments[canonical_id(symbol)]
        except (KeyError, ValueError):
            raise KeyError(
                f"unknown symbol {symbol!r}: the gateway serves {self.symbols}"
            ) from None

    def model(self, symbol: str) -> MarketModel:
        return self.instrument(symbol).model

    def now(self) -> float:
        """Current simulated time, epoch seconds."""
        return self.clock.now()

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

    def _matching(self, spec: ContractSpec) -> list[Instrument]:
        """Every instrument a request's contract designates (more than one: ambiguous)."""
        return [i for i in self._instruments.values() if i.matches(spec)]

    def _resolve(self, spec: ContractSpec) -> Instrument | None:
        found = self._matching(spec)
        return found[0] if len(found) == 1 else None

    def real_time(self) -> float:
        """The real monotonic clock (pacing is in real time, not simulated time)."""
        return self._real_clock()

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen and start streaming. ``port`` holds the bound port afterwards."""
        await self.start_listening()
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump_loop(), name="gateway-pump")
        logger.info(
            f"gateway: simulated IB Gateway on {self.host}:{self.port}, symbols {self.symbols}, "
            f"server version {MAX_SERVER_VERSION}, time compression {self.clock.time_compression}"
        )

    async def stop(self) -> None:
        """Close every session and stop listening and streaming (idempotent)."""
        await self.stop_listening()
        if self._pump_task is not None:
            self._pump_task.cancel()
            try:
                await self._pump_task
            except asyncio.CancelledError:
                pass
            self._pump_task = None

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
        session = Session(self, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        session.task = task
        self._sessions.add(session)
        self._count("connections")
        try:
            await session.run()
        except asyncio.CancelledError:
            pass  # loop shutdown: end quietly instead of "Task exception was never retrieved"
        except Exception:
            logger.exception(f"gateway: {session} failed; closing it")
        finally:
            session.close()
            self._sessions.discard(session)

    def _client_id_in_use(self, client_id: int, asking: Session) -> bool:
        return any(
            s is not asking and s.started and not s.closed and s.client_id == client_id
            for s in self._sessions
        )

    async def _wait_unstalled(self) -> None:
        await self._unstalled.wait()

    async def _pump_loop(self) -> None:
        # Each pump covers at most `span` simulated seconds, so a gateway that cannot keep up
        # lags behind (and says so) instead of doing ever larger pumps.
        span = max(5.0, 4 * self.tick_interval * self.clock.time_compression)
        pumped_until = self.clock.now()
        warned_at = -math.inf
        while True:
            await asyncio.sleep(self.tick_interval)
            target = self.clock.now()
            now = min(target, pumped_until + span)
            pumped_until = now
            if target - now > span and time.monotonic() - warned_at > 10:
                warned_at = time.monotonic()
                self._count("lagging_pumps")
                logger.warning(
                    f"gateway: cannot keep up; data lags {target - now:.0f} simulated seconds"
                )
            skip = self.data_paused or not self._unstalled.is_set()
            for session in list(self._sessions):
                try:
                    session.pump(now, skip)
                except Exception:
                    logger.exception(f"gateway: streaming to {session} failed; closing it")
                    session.abort()
            self._pumps += 1
            waiting = []
            for target, future in self._pump_waiters:
                if target <= self._pumps:
                    if not future.done():
                        future.set_result(None)
                else:
                    waiting.append((target, future))
            self._pump_waiters = waiting

    async def wait_pumps(self, n: int = 1) -> None:
        """Wait until the data pump has run ``n`` more times; each run writes everything due
        up to that moment (or skips it while data is paused). Needs a started gateway."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pump_waiters.append((self._pumps + n, future))
        await future

    # ---- introspection -------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n

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
        per_symbol = {s: dict(c) for s, c in self._symbol_stats.items()}
        totals: Counter[str] = Counter()
        for c in self._symbol_stats.values():
            totals.update(c)
        return {
            "sim_time": self.now(),
            "listening": self.listening,
            "sessions": len(self.sessions()),
            "data_paused": self.data_paused,
            "stalled": not self._unstalled.is_set(),
            "events": dict(self._counters),
            "totals": dict(totals),
            "symbols": per_symbol,
        }

    # ---- faults --------------------------------------------------------------------------

    def drop_all(self) -> int:
        """Close every client socket at once (clients see the connection drop). Returns how many."""
        live = [s for s in self._sessions if not s.closed]
        if live:
            logger.warning(f"gateway: fault: dropping {len(live)} client connection(s)")
        self._count("drops", len(live))
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
        self._count("restarts")
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
        self._count(f"broadcast_{code}")
        return sent

    def pause_data(self, paused: bool = True) -> None:
        """Stop (True) or restart (False) all data on open sockets; nothing is sent for the
        paused period, like a lost IB link (1100)."""
        if paused != self.data_paused:
            logger.warning(f"gateway: fault: data {'paused' if paused else 'resumed'}")
        self.data_paused = paused

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
            self._unstalled.clear()
        else:
            self._unstalled.set()

    async def control(self, command: str) -> str:
        """Run one text command (see ``CONTROL_HELP``); returns a line to show the user.

        Raises ``ValueError`` naming the command and the expected forms if it is invalid."""
        words = command.split()
        if not words:
            return ""
        name, args = words[0].lower(), words[1:]
        try:
            if name == "help":
                return CONTROL_HELP
            if name == "status":
                return self._status_text()
            if name == "drop":
                return f"dropped {self.drop_all()} connection(s)"
            if name == "restart":
                downtime = float(args[0]) if args else 5.0
                await self.restart(downtime)
                return f"restarted after {downtime}s down"
            if name == "error":
                code = int(args[0])
                sent = self.broadcast_error(code, " ".join(args[1:]) or None)
                return f"sent error {code} to {sent} client(s)"
            if name == "lost":
                self.connectivity_lost()
                return "connectivity lost (1100), data paused"
            if name == "restored":
                lost = bool(args) and args[0].lower() == "lost"
                self.connectivity_restored(data_lost=lost)
                return f"connectivity restored ({'1101 data lost' if lost else '1102 data kept'})"
            if name in ("pause", "resume"):
                self.pause_data(name == "pause")
                return f"data {name}d"
            if name == "pacing":
                return f"sent error 100 to {self.pacing_violation()} client(s)"
            if name in ("stall", "unstall"):
                self.stall(name == "stall")
                return f"{name}ed"
        except (IndexError, ValueError):
            raise ValueError(
                f"invalid arguments for {command!r}; commands:\n{CONTROL_HELP}"
            ) from None
        raise ValueError(f"unknown command {command!r}; commands:\n{CONTROL_HELP}")

    def _status_text(self) -> str:
        stats = self.stats()
        sim = datetime.fromtimestamp(stats["sim_time"], UTC).isoformat(timespec="seconds")
        lines = [
            f"listening={stats['listening']} on {self.host}:{self.port} sim_time={sim} "
            f"paused={stats['data_paused']} stalled={stats['stalled']}",
            f"totals: {stats['totals']}",
            f"events: {stats['events']}",
        ]
        lines += [
            f"client {s.client_id} {s.peer}: {len(s.tick_req_ids)} tick, "
            f"{len(s.bar_req_ids)} bar, {len(s.history_req_ids)} history subscription(s), "
            f"market data type {s.market_data_type}"
            for s in self.sessions()
        ]
        return "\n".join(lines)
