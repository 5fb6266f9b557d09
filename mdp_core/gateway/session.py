"""One client connection of the simulated gateway: handshake, requests, data pumping.

A ``Session`` answers requests with the layouts in ``protocol`` and, on every pump of its
gateway, writes the ticks, real-time bars and keepUpToDate updates that became due.
It also defines the records the gateway keeps for assertions (``RecordedRequest``,
``SentTick``, ``SentBar``, ``SessionInfo``).
"""

from __future__ import annotations

import asyncio
import re
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from mdp_core.calendars import open_intervals
from mdp_core.gateway.codec import API_PREFIX, FrameError, decode_payload, encode, read_frame
from mdp_core.gateway.history import (
    format_bar_date,
    format_range_time,
    parse_bar_size,
    parse_duration,
    parse_end,
)
from mdp_core.gateway.instruments import Instrument, contract_data
from mdp_core.gateway.market import (
    BAR_SECONDS,
    WHAT_TO_SHOW,
    MarketModel,
    SimBar,
    SimTick,
    aggregate_bars,
    bars_in_windows,
)
from mdp_core.gateway.protocol import (
    MAX_SERVER_VERSION,
    MIN_CLIENT_VERSION,
    ContractDetailsRequest,
    HistoricalDataRequest,
    In,
    MalformedRequest,
    MktDataRequest,
    Out,
    RealTimeBarsRequest,
    error_msg,
    error_text,
    historical_update,
    realtime_bar,
    tick_frames,
)
from mdp_core.logs import logger
from mdp_core.providers.ibkr.history import MAX_DURATION

if TYPE_CHECKING:
    from mdp_core.gateway.server import SimulatedGateway

__all__ = ["RecordedRequest", "SentBar", "SentTick", "Session", "SessionInfo"]

_VERSION_RE = re.compile(r"^v(\d+)(?:\.\.(\d+))?")
_ACCOUNT_VALUES = {
    "NetLiquidation": "1000000.00",
    "TotalCashValue": "1000000.00",
    "BuyingPower": "4000000.00",
    "AvailableFunds": "1000000.00",
    "ExcessLiquidity": "1000000.00",
}


@dataclass
class RecordedRequest:
    """A request as received, and what the gateway answered directly.

    ``replies`` holds the msg ids sent in reply, in order; ``errors`` the error codes among
    them. ``time`` is simulated epoch seconds.
    """

    client_id: int | None
    msg_id: int
    fields: tuple[str, ...]
    time: float
    replies: list[int] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SentTick:
    """A tick burst written to a client (``delayed``: sent with delayed tick types)."""

    client_id: int
    req_id: int
    tick: SimTick
    delayed: bool


@dataclass(frozen=True, slots=True)
class SentBar:
    """A bar written to a client: ``kind`` is ``"realtime"`` (msg 50) or ``"update"`` (msg 90)."""

    client_id: int
    req_id: int
    bar: SimBar
    kind: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A snapshot of one client session."""

    client_id: int | None
    peer: str
    server_version: int
    market_data_type: int
    tick_req_ids: tuple[int, ...]
    bar_req_ids: tuple[int, ...]
    history_req_ids: tuple[int, ...]


def _frame_ids(frame: bytes) -> tuple[int, int | None]:
    """(msg id, error code or None) of an encoded frame."""
    fields = frame[4:].split(b"\0", 5)
    msg_id = int(fields[0])
    return msg_id, int(fields[3]) if msg_id == Out.ERR_MSG else None


def _tick_time(tick: SimTick) -> float:
    return tick.time


_BY_TIME = itemgetter(0)


@dataclass(eq=False)
class _TickSub:
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

    def take(self, now: float, out: list[tuple[float, _TickSub, SimTick]]) -> None:
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
class _BarSub:
    req_id: int
    inst: Instrument
    what_to_show: str
    cursor: int  # start of the next bar to send


@dataclass(eq=False)
class _HistorySub:
    req_id: int
    inst: Instrument
    seconds: int
    what_to_show: str
    format_date: int
    window: int  # start of the window being updated
    done_until: int  # 5-second bars before this are folded into `complete`
    complete: SimBar | None = None
    last_sent: SimBar | None = None


class Session:
    """One client connection: handshake, request handling and data pumping."""

    def __init__(
        self, gw: SimulatedGateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.gw = gw
        self.task: asyncio.Task[None] | None = None
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client_id: int | None = None
        self.server_version = 0
        self.market_data_type = 1
        self.next_order_id = 1
        self.started = False
        self.closed = False
        self.ticks: dict[int, _TickSub] = {}
        self.bars: dict[int, _BarSub] = {}
        self.history: dict[int, _HistorySub] = {}
        self._request_times: deque[float] = deque()
        self._pacing_warned_at = 0.0
        self._close_after_write = False
        self._handlers: dict[int, Callable[[list[str]], list[bytes]]] = {
            In.START_API: self._start_api,
            In.REQ_POSITIONS: lambda f: [encode(Out.POSITION_END, 1)],
            In.REQ_OPEN_ORDERS: lambda f: [encode(Out.OPEN_ORDER_END, 1)],
            In.REQ_COMPLETED_ORDERS: lambda f: [encode(Out.COMPLETED_ORDERS_END)],
            In.REQ_ACCOUNT_UPDATES: self._account_updates,
            In.REQ_ACCOUNT_UPDATES_MULTI: self._account_updates_multi,
            In.REQ_EXECUTIONS: lambda f: [encode(Out.EXECUTION_DATA_END, 1, self._req_id(f, 2))],
            In.REQ_ACCOUNT_SUMMARY: self._account_summary,
            In.REQ_CURRENT_TIME: lambda f: [encode(Out.CURRENT_TIME, 1, int(self.gw.now()))],
            In.REQ_IDS: lambda f: [encode(Out.NEXT_VALID_ID, 1, self.next_order_id)],
            In.REQ_MANAGED_ACCTS: lambda f: [self._managed_accounts()],
            In.REQ_MARKET_DATA_TYPE: self._market_data_type,
            In.REQ_CONTRACT_DATA: self._contract_details,
            In.REQ_MKT_DATA: self._mkt_data,
            In.CANCEL_MKT_DATA: self._cancel_mkt_data,
            In.REQ_REAL_TIME_BARS: self._real_time_bars,
            In.CANCEL_REAL_TIME_BARS: lambda f: self._cancel(self.bars, f),
            In.REQ_HISTORICAL_DATA: self._historical_data,
            In.CANCEL_HISTORICAL_DATA: lambda f: self._cancel(self.history, f),
            In.REQ_AUTO_OPEN_ORDERS: lambda f: [],
            In.CANCEL_POSITIONS: lambda f: [],
            In.CANCEL_ACCOUNT_SUMMARY: lambda f: [],
            In.CANCEL_ACCOUNT_UPDATES_MULTI: lambda f: [],
        }

    def __str__(self) -> str:
        who = f"client {self.client_id}" if self.client_id is not None else "new client"
        return f"{who} ({self.peer})"

    # ---- connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the peer leaves, a frame is malformed or it is closed."""
        try:
            if not await self._handshake():
                self.gw._count("handshake_failures")
                return
            while not self.closed:
                payload = await read_frame(self.reader, self.gw.max_frame_bytes)
                fields = decode_payload(payload)
                try:
                    msg_id = int(fields[0])
                except ValueError:
                    raise FrameError(f"message id {fields[0]!r} is not an integer") from None
                await self.gw._wait_unstalled()
                if self.closed:
                    return
                self._handle(msg_id, fields)
                if self._close_after_write:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            if not self.closed:
                logger.info(f"gateway: {self} disconnected")
        except (FrameError, MalformedRequest) as exc:
            self.gw._count("malformed_sessions")
            logger.error(f"gateway: {self} sent a malformed message: {exc}; closing this session")
        finally:
            self.close()

    async def _handshake(self) -> bool:
        prefix = await self.reader.readexactly(len(API_PREFIX))
        if prefix != API_PREFIX:
            logger.error(
                f"gateway: {self} handshake refused: got prefix {prefix!r}, expected {API_PREFIX!r}"
            )
            return False
        text = (await read_frame(self.reader, 4096)).decode(errors="replace")
        match = _VERSION_RE.match(text)
        if not match:
            logger.error(
                f"gateway: {self} handshake refused: version frame {text!r}, expected 'vMIN..MAX'"
            )
            return False
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if low > MAX_SERVER_VERSION or high < MIN_CLIENT_VERSION:
            logger.error(
                f"gateway: {self} handshake refused: client versions {low}..{high} do not overlap "
                f"the supported {MIN_CLIENT_VERSION}..{MAX_SERVER_VERSION}"
            )
            return False
        self.server_version = min(high, MAX_SERVER_VERSION)
        conn_time = datetime.fromtimestamp(self.gw.now(), UTC).strftime("%Y%m%d %H:%M:%S UTC")
        self.writer.write(encode(self.server_version, conn_time))
        logger.info(
            f"gateway: {self} connected: client versions {low}..{high}, "
            f"server version {self.server_version}"
        )
        return True

    def write(self, frames: list[bytes]) -> bool:
        """Write ``frames`` in one go; False if the socket is closing."""
        if self.closed or self.writer.is_closing():
            return False
        self.writer.write(b"".join(frames))
        buffered = self.writer.transport.get_write_buffer_size()
        if buffered > self.gw.max_write_buffer:
            self.gw._count("slow_consumers")
            logger.error(
                f"gateway: {self} is not reading ({buffered} bytes buffered, limit "
                f"{self.gw.max_write_buffer}); closing this session"
            )
            self.abort()
        return True

    def close(self) -> None:
        """Close after flushing what is buffered."""
        if not self.closed:
            self.closed = True
            self.gw._count("sessions_closed")
            self.writer.close()

    def abort(self) -> None:
        """Close at once, dropping buffered data (the client sees a reset)."""
        self.close()
        self.writer.transport.abort()

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.client_id, self.peer, self.server_version, self.market_data_type,
            tuple(self.ticks), tuple(self.bars), tuple(self.history),
        )  # fmt: skip

    def clear_subscriptions(self) -> None:
        self.ticks.clear()
        self.bars.clear()
        self.history.clear()

    # ---- requests ------------------------------------------------------------------------

    def _handle(self, msg_id: int, fields: list[str]) -> None:
        gw = self.gw
        record = RecordedRequest(self.client_id, msg_id, tuple(fields), gw.now())
        gw.requests.append(record)
        self._check_pacing()
        if msg_id in gw.ignored_requests:
            logger.debug(f"gateway: {self} msg {msg_id} ignored on purpose")
            return
        handler = self._handlers.get(msg_id)
        if handler is None:
            logger.warning(f"gateway: {self} sent unknown msg id {msg_id} {fields[:6]!r}; ignored")
            return
        if not self.started and msg_id != In.START_API:
            logger.warning(f"gateway: {self} sent msg {msg_id} before startApi; ignored")
            return
        frames = handler(fields)
        if frames and self.write(frames):
            for frame in frames:
                reply, code = _frame_ids(frame)
                record.replies.append(reply)
                if code is not None:
                    record.errors.append(code)
                    gw._count(f"error_{code}")

    def _check_pacing(self) -> None:
        limit = self.gw.pacing_limit
        if limit is None or not self.started:
            return
        now = time.monotonic()
        times = self._request_times
        times.append(now)
        while times and times[0] < now - 1.0:
            times.popleft()
        if len(times) > limit and now - self._pacing_warned_at >= 1.0:
            self._pacing_warned_at = now
            logger.warning(f"gateway: {self} exceeded {limit} requests/s; sending error 100")
            self.write([error_msg(-1, 100)])

    @staticmethod
    def _req_id(fields: list[str], index: int) -> int:
        try:
            return int(fields[index])
        except (IndexError, ValueError):
            raise MalformedRequest(
                f"msg {fields[0]}: field {index} (reqId) missing or not an integer in {fields!r}"
            ) from None

    def _start_api(self, fields: list[str]) -> list[bytes]:
        client_id = self._req_id(fields, 2)
        if self.started:
            logger.warning(f"gateway: {self} sent startApi twice; ignored")
            return []
        if self.gw._client_id_in_use(client_id, self):
            self.gw._count("duplicate_client_ids")
            logger.error(f"gateway: client id {client_id} is already in use; refusing {self.peer}")
            self._close_after_write = True
            return [error_msg(-1, 326)]
        self.client_id = client_id
        self.started = True
        self.gw._count("sessions_started")
        logger.info(f"gateway: {self} started the API")
        return [
            self._managed_accounts(),
            encode(Out.NEXT_VALID_ID, 1, self.next_order_id),
            error_msg(-1, 2104),
            error_msg(-1, 2106),
            error_msg(-1, 2158),
        ]

    def _managed_accounts(self) -> bytes:
        return encode(Out.MANAGED_ACCTS, 1, ",".join(self.gw.accounts))

    def _account_updates(self, fields: list[str]) -> list[bytes]:
        if len(fields) < 4 or fields[2] != "1":
            return []  # unsubscribe
        account = fields[3] or self.gw.accounts[0]
        frames = [
            encode(Out.ACCT_VALUE, 2, key, value, "USD", account)
            for key, value in _ACCOUNT_VALUES.items()
        ]
        hhmm = datetime.fromtimestamp(self.gw.now(), UTC).strftime("%H:%M")
        return [
            *frames,
            encode(Out.ACCT_UPDATE_TIME, 1, hhmm),
            encode(Out.ACCT_DOWNLOAD_END, 1, account),
        ]

    def _account_updates_multi(self, fields: list[str]) -> list[bytes]:
        req_id = self._req_id(fields, 2)
        account = fields[3] if len(fields) > 3 and fields[3] else self.gw.accounts[0]
        frames = [
            encode(Out.ACCOUNT_UPDATE_MULTI, 1, req_id, account, "", key, value, "USD")
            for key, value in _ACCOUNT_VALUES.items()
        ]
        return [*frames, encode(Out.ACCOUNT_UPDATE_MULTI_END, 1, req_id)]

    def _account_summary(self, fields: list[str]) -> list[bytes]:
        req_id = self._req_id(fields, 2)
        tags = set(fields[4].split(",")) if len(fields) > 4 else set()
        frames = [
            encode(Out.ACCOUNT_SUMMARY, 1, req_id, account, tag, value, "USD")
            for account in self.gw.accounts
            for tag, value in _ACCOUNT_VALUES.items()
            if tag in tags or not tags
        ]
        return [*frames, encode(Out.ACCOUNT_SUMMARY_END, 1, req_id)]

    def _market_data_type(self, fields: list[str]) -> list[bytes]:
        kind = self._req_id(fields, 2)
        if kind not in (1, 2, 3, 4):
            logger.warning(f"gateway: {self} asked for market data type {kind}; expected 1..4")
            return []
        self.market_data_type = kind
        return []

    def _contract_details(self, fields: list[str]) -> list[bytes]:
        req = ContractDetailsRequest.parse(fields)
        found = self.gw._matching(req.contract)  # several: ambiguous, like IB's answer
        if not found:
            return [error_msg(req.req_id, 200)]
        return [
            *(contract_data(req.req_id, inst, req.contract.exchange) for inst in found),
            encode(Out.CONTRACT_DATA_END, 1, req.req_id),
        ]

    def _lines_used(self) -> int:
        return len(self.ticks) + len(self.bars)

    def _mkt_data(self, fields: list[str]) -> list[bytes]:
        req = MktDataRequest.parse(fields)
        req_id, gw = req.req_id, self.gw
        inst = gw._resolve(req.contract)
        if inst is None:
            return [error_msg(req_id, 200)]
        if req_id in self.ticks:
            return [error_msg(req_id, 322)]
        if not req.snapshot and self._lines_used() >= gw.max_lines:
            return [error_msg(req_id, 101)]
        delayed = self.market_data_type in (3, 4) or not inst.live
        frames = [error_msg(req_id, 10167)] if delayed else []
        frames.append(encode(Out.MARKET_DATA_TYPE, 1, req_id, 3 if delayed else 1))
        frames.append(encode(Out.TICK_REQ_PARAMS, req_id, 0.01, "9c0001", 3))
        now = gw.now()
        rt_volume = "233" in req.generic_ticks.split(",")
        sub = _TickSub(
            req_id, inst, delayed, rt_volume, gw._symbol_stats[inst.symbol], inst.has_trades
        )
        sub.seek(now)
        if not gw.data_paused:
            last = inst.model.last_tick_before(now)
            if last is not None:
                frames.extend(self._tick_burst(sub, last))
        if req.snapshot:
            frames.append(encode(Out.TICK_SNAPSHOT_END, 1, req_id))
        else:
            self.ticks[req_id] = sub
        return frames

    def _cancel_mkt_data(self, fields: list[str]) -> list[bytes]:
        req_id = self._req_id(fields, 2)
        if self.ticks.pop(req_id, None) is None:
            return [error_msg(req_id, 300, error_text(300, str(req_id)))]
        return []

    def _cancel(self, subs: dict[int, Any], fields: list[str]) -> list[bytes]:
        subs.pop(self._req_id(fields, 2), None)
        return []

    def _real_time_bars(self, fields: list[str]) -> list[bytes]:
        req = RealTimeBarsRequest.parse(fields)
        req_id = req.req_id
        inst = self.gw._resolve(req.contract)
        if inst is None:
            return [error_msg(req_id, 200)]
        if req_id in self.bars:
            return [error_msg(req_id, 322)]
        if req.bar_size != BAR_SECONDS:
            detail = f"bar size {req.bar_size} is not supported; only 5 seconds"
            return [error_msg(req_id, 420, error_text(420, detail))]
        if req.what_to_show not in WHAT_TO_SHOW:
            return [error_msg(req_id, 321)]
        if req.what_to_show == "TRADES" and not inst.has_trades:
            detail = f"no TRADES for {inst.local_symbol} (FX): use MIDPOINT, BID or ASK"
            return [error_msg(req_id, 420, error_text(420, detail))]
        if self._lines_used() >= self.gw.max_lines:
            return [error_msg(req_id, 101)]
        cursor = int(self.gw.now() // BAR_SECONDS) * BAR_SECONDS
        self.bars[req_id] = _BarSub(req_id, inst, req.what_to_show, cursor)
        return []

    def _historical_data(self, fields: list[str]) -> list[bytes]:
        req = HistoricalDataRequest.parse(fields)
        req_id, gw = req.req_id, self.gw
        inst = gw._resolve(req.contract)
        if inst is None:
            return [error_msg(req_id, 200)]
        refusal = self._pace_history(req, inst)
        if refusal is not None:
            return [refusal]
        now = gw.now()
        try:
            seconds = parse_bar_size(req.bar_size)
            duration = parse_duration(req.duration)
            end = min(parse_end(req.end, now), now)
            if req.what_to_show not in WHAT_TO_SHOW:
                raise ValueError(
                    f"unsupported whatToShow {req.what_to_show!r}: expected {WHAT_TO_SHOW}"
                )
            if req.what_to_show == "TRADES" and not inst.has_trades:
                raise ValueError(
                    f"No historical market data for {inst.local_symbol}/CASH@"
                    f"{inst.spec.exchange} Trades: FX has no trades; use MIDPOINT, BID or ASK"
                )
            if req.keep_up_to_date and req.end.strip():
                raise ValueError("End date not supported with live updates")
            longest = MAX_DURATION.get(seconds)
            if longest is not None and duration > longest:
                raise ValueError(
                    f"duration {req.duration!r} is longer than IB serves for "
                    f"{req.bar_size!r} bars ({longest} S)"
                )
            if duration / BAR_SECONDS > gw.max_history_bars:
                raise ValueError(
                    f"duration {req.duration!r} spans more than {gw.max_history_bars} 5-second bars"
                )
        except ValueError as exc:
            return [error_msg(req_id, 162, error_text(162, str(exc)))]
        start = end - duration
        sessions = (
            [
                (lo.timestamp(), hi.timestamp())
                for lo, hi in open_intervals(
                    inst.spec.calendar,
                    datetime.fromtimestamp(start, UTC),
                    datetime.fromtimestamp(end, UTC),
                )
            ]
            if req.use_rth
            else None
        )
        bars = bars_in_windows(
            inst.model, int(start), int(end), seconds, req.what_to_show, sessions
        )
        if not bars and req.keep_up_to_date:
            # ib_async ignores keepUpToDate updates after an empty first answer
            bars = self._latest_window(inst.model, int(start), seconds, req.what_to_show)
        if not bars:
            detail = (
                f"HMDS query returned no data: {inst.local_symbol}@{inst.spec.exchange} "
                f"{req.what_to_show.title()}"
            )
            return [error_msg(req_id, 162, error_text(162, detail))]
        rows: list[Any] = []
        for b in bars:
            date = format_bar_date(b.time, seconds, req.format_date)
            rows += [date, b.open, b.high, b.low, b.close, b.volume, b.wap, b.count]
        gw._symbol_stats[inst.symbol]["history_bars"] += len(bars)
        frames = [
            encode(
                Out.HISTORICAL_DATA,
                req_id,
                format_range_time(start),
                format_range_time(end),
                len(bars),
                *rows,
            )
        ]
        if req.keep_up_to_date:
            window = int(now // seconds) * seconds
            self.history[req_id] = _HistorySub(
                req_id, inst, seconds, req.what_to_show, req.format_date, window, window
            )
        return frames

    def _pace_history(self, req: HistoricalDataRequest, inst: Instrument) -> bytes | None:
        """Error 162 if the request breaks IB's historical pacing rules (then it does not
        count); else count it and return None."""
        ledger = self.gw.history_pacing
        if ledger is None:
            return None
        now = self.gw.real_time()
        ledger.prune(now)
        contract = (inst.symbol, req.contract.exchange.upper(), req.what_to_show)
        request = (
            inst.symbol, req.end, req.bar_size, req.duration, req.use_rth, req.what_to_show,
            req.format_date, req.keep_up_to_date,
        )  # fmt: skip
        rule = ledger.violation(now, contract, request)
        if rule is None:
            ledger.add(contract, request, now)
            return None
        self.gw._count("history_pacing_violations")
        logger.warning(
            f"gateway: {self} broke IB's historical pacing ({rule}); answering error 162"
        )
        return error_msg(
            req.req_id, 162, error_text(162, "Historical data request pacing violation")
        )

    @staticmethod
    def _latest_window(model: MarketModel, before: int, seconds: int, what: str) -> list[SimBar]:
        w = before // seconds * seconds
        for _ in range(64):
            bars = bars_in_windows(model, w - seconds, w, seconds, what)
            if bars:
                return bars
            w -= seconds
        return []

    # ---- streaming -----------------------------------------------------------------------

    def _tick_burst(self, sub: _TickSub, tick: SimTick) -> list[bytes]:
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
        self.gw.sent_ticks.append(SentTick(self.client_id or 0, sub.req_id, tick, sub.delayed))
        return frames

    def pump(self, now: float, skip: bool) -> None:
        """Send what happened since the last pump up to ``now``; ``skip`` drops it instead.

        Ticks of all subscriptions go out merged in time order (ties in subscription
        order), as TWS sends events as they happen: consecutive messages are mostly for
        different symbols, so a client read holds a little of many symbols.
        """
        if self.closed or not self.started:
            return
        frames: list[bytes] = []
        current = int(now // BAR_SECONDS) * BAR_SECONDS
        if skip:
            for sub in self.ticks.values():
                sub.seek(now)
        else:
            due: list[tuple[float, _TickSub, SimTick]] = []
            for sub in self.ticks.values():
                if sub.next_time < now:
                    sub.take(now, due)
            due.sort(key=_BY_TIME)  # stable: ties keep subscription order
            for _, sub, tick in due:
                frames += self._tick_burst(sub, tick)
        for bar_sub in self.bars.values():
            if skip:
                bar_sub.cursor = max(bar_sub.cursor, current)
            while bar_sub.cursor + BAR_SECONDS <= now:
                bar = bar_sub.inst.model.bar(bar_sub.cursor, bar_sub.what_to_show)
                bar_sub.cursor += BAR_SECONDS
                if bar is not None:
                    frames.append(realtime_bar(bar_sub.req_id, bar))
                    self.gw._symbol_stats[bar.symbol]["bars"] += 1
                    self.gw.sent_bars.append(
                        SentBar(self.client_id or 0, bar_sub.req_id, bar, "realtime")
                    )
        for hist in self.history.values():
            frames.extend(self._history_updates(hist, now, skip))
        if frames:
            self.write(frames)

    def _history_updates(self, sub: _HistorySub, now: float, skip: bool) -> list[bytes]:
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
                self.gw._symbol_stats[current.symbol]["history_updates"] += 1
                self.gw.sent_bars.append(
                    SentBar(self.client_id or 0, sub.req_id, current, "update")
                )
            if sub.window == window:
                break
            sub.window = sub.done_until = end
            sub.complete = sub.last_sent = None
        return frames
