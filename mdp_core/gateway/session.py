"""``Session``: one client connection of the simulated gateway.

The handshake, the read loop, startApi, the dispatch of every other request to its handler
(``handlers.HANDLERS``) with the request and the replies recorded, per-connection pacing,
and writing what the client is owed on each pump (``ClientState.pump``). A session sees the
gateway only through its ``GatewayState``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from datetime import UTC, datetime

from mdp_core.gateway.client import BarSub, ClientState, HistorySub, TickSub
from mdp_core.gateway.codec import API_PREFIX, FrameError, decode_payload, encode, read_frame
from mdp_core.gateway.handlers import HANDLERS
from mdp_core.gateway.handlers.account import managed_accounts
from mdp_core.gateway.protocol import (
    MAX_SERVER_VERSION,
    MIN_CLIENT_VERSION,
    In,
    MalformedRequest,
    Out,
    error_msg,
    parse_req_id,
)
from mdp_core.gateway.records import RecordedRequest, SentBar, SentTick, SessionInfo
from mdp_core.gateway.state import GatewayState
from mdp_core.logs import logger

__all__ = ["RecordedRequest", "SentBar", "SentTick", "Session", "SessionInfo"]

_VERSION_RE = re.compile(r"^v(\d+)(?:\.\.(\d+))?")


def _frame_ids(frame: bytes) -> tuple[int, int | None]:
    """(msg id, error code or None) of an encoded frame."""
    fields = frame[4:].split(b"\0", 5)
    msg_id = int(fields[0])
    return msg_id, int(fields[3]) if msg_id == Out.ERR_MSG else None


class Session:
    """One client connection: handshake, request handling and data pumping."""

    def __init__(
        self, state: GatewayState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.state = state
        self.task: asyncio.Task[None] | None = None
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client = ClientState(state, self.peer)
        self.server_version = 0
        self.started = False
        self.closed = False
        self._request_times: deque[float] = deque()
        self._pacing_warned_at = 0.0
        self._close_after_write = False

    def __str__(self) -> str:
        return str(self.client)

    @property
    def client_id(self) -> int | None:
        return self.client.client_id

    @property
    def market_data_type(self) -> int:
        return self.client.market_data_type

    @property
    def ticks(self) -> dict[int, TickSub]:
        return self.client.ticks

    @property
    def bars(self) -> dict[int, BarSub]:
        return self.client.bars

    @property
    def history(self) -> dict[int, HistorySub]:
        return self.client.history

    # ---- connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the peer leaves, a frame is malformed or it is closed."""
        state = self.state
        try:
            if not await self._handshake():
                state.count("handshake_failures")
                return
            while not self.closed:
                payload = await read_frame(self.reader, state.max_frame_bytes)
                fields = decode_payload(payload)
                try:
                    msg_id = int(fields[0])
                except ValueError:
                    raise FrameError(f"message id {fields[0]!r} is not an integer") from None
                await state.unstalled.wait()
                if self.closed:
                    return
                self._handle(msg_id, fields)
                if self._close_after_write:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            if not self.closed:
                logger.info(f"gateway: {self} disconnected")
        except (FrameError, MalformedRequest) as exc:
            state.count("malformed_sessions")
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
        conn_time = datetime.fromtimestamp(self.state.now(), UTC).strftime("%Y%m%d %H:%M:%S UTC")
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
        if buffered > self.state.max_write_buffer:
            self.state.count("slow_consumers")
            logger.error(
                f"gateway: {self} is not reading ({buffered} bytes buffered, limit "
                f"{self.state.max_write_buffer}); closing this session"
            )
            self.abort()
        return True

    def close(self) -> None:
        """Close after flushing what is buffered."""
        if not self.closed:
            self.closed = True
            if self.started and self.client_id is not None:
                self.state.client_ids.discard(self.client_id)
            self.state.count("sessions_closed")
            self.writer.close()

    def abort(self) -> None:
        """Close at once, dropping buffered data (the client sees a reset)."""
        self.close()
        self.writer.transport.abort()

    def info(self) -> SessionInfo:
        c = self.client
        return SessionInfo(
            c.client_id, self.peer, self.server_version, c.market_data_type,
            tuple(c.ticks), tuple(c.bars), tuple(c.history),
        )  # fmt: skip

    def clear_subscriptions(self) -> None:
        self.client.clear()

    # ---- requests ------------------------------------------------------------------------

    def _handle(self, msg_id: int, fields: list[str]) -> None:
        state = self.state
        record = RecordedRequest(self.client_id, msg_id, tuple(fields), state.now())
        state.requests.append(record)
        self._check_pacing()
        if msg_id in state.ignored_requests:
            logger.debug(f"gateway: {self} msg {msg_id} ignored on purpose")
            return
        if msg_id == In.START_API:
            frames = self._start_api(fields)
        else:
            handler = HANDLERS.get(msg_id)
            if handler is None:
                logger.warning(
                    f"gateway: {self} sent unknown msg id {msg_id} {fields[:6]!r}; ignored"
                )
                return
            if not self.started:
                logger.warning(f"gateway: {self} sent msg {msg_id} before startApi; ignored")
                return
            frames = handler(self.client, fields)
        if frames and self.write(frames):
            for frame in frames:
                reply, code = _frame_ids(frame)
                record.replies.append(reply)
                if code is not None:
                    record.errors.append(code)
                    state.count(f"error_{code}")

    def _check_pacing(self) -> None:
        limit = self.state.pacing_limit
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

    def _start_api(self, fields: list[str]) -> list[bytes]:
        client_id = parse_req_id(fields, 2)
        if self.started:
            logger.warning(f"gateway: {self} sent startApi twice; ignored")
            return []
        if client_id in self.state.client_ids:
            self.state.count("duplicate_client_ids")
            logger.error(f"gateway: client id {client_id} is already in use; refusing {self.peer}")
            self._close_after_write = True
            return [error_msg(-1, 326)]
        self.client.client_id = client_id
        self.started = True
        self.state.client_ids.add(client_id)
        self.state.count("sessions_started")
        logger.info(f"gateway: {self} started the API")
        return [
            managed_accounts(self.state),
            encode(Out.NEXT_VALID_ID, 1, self.client.next_order_id),
            error_msg(-1, 2104),
            error_msg(-1, 2106),
            error_msg(-1, 2158),
        ]

    # ---- streaming -----------------------------------------------------------------------

    def pump(self, now: float, skip: bool) -> None:
        """Write what happened since the last pump up to ``now`` (``ClientState.pump``);
        ``skip`` drops it instead."""
        if self.closed or not self.started:
            return
        frames = self.client.pump(now, skip)
        if frames:
            self.write(frames)
