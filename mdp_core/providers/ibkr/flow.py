"""Flow control of the IB socket: pause reading when the downstream is full, and split
large reads.

The callbacks cannot wait. When the channel is full (under ``block``), ``FlowControl``
stops reading the socket until the consumer made room, so TCP holds the gateway back and
nothing is dropped; what ib_async already read is still delivered, so memory stays
bounded by the channel plus one socket read.

``ReadSplitter`` hands ib_async's decoder the socket's reads in pieces of at most
``read_chunk`` bytes (see ``IBKROptions.read_chunk`` for why). It rewires the
connection's ``hasData`` event and keeps which events it rewired by ``id()``: it never sets
attributes on the event, which ib_insync's ``eventkit`` does not allow.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mdp_core.providers.ibkr.state import ClientState

__all__ = ["FlowControl", "ReadSplitter"]

_SPLIT: set[int] = set()  # id() of the ``hasData`` events whose reads are split already


class FlowControl:
    """``pause()`` when a delivery reported a full channel; reading resumes by itself once
    the channel has room (and the watchdog's silence count restarts: the silence was ours)."""

    def __init__(self, state: ClientState) -> None:
        self._st = state
        self._resume_task: asyncio.Task[None] | None = None

    def pause(self) -> None:
        """Stop reading the socket until the consumer made room (no-op if paused, stopping
        or not connected)."""
        st = self._st
        if st.paused or st.stopping:
            return
        transport = getattr(getattr(getattr(st.ib, "client", None), "conn", None),
                            "transport", None)  # fmt: skip
        if transport is None:
            return
        transport.pause_reading()
        st.paused = True
        st.counts["pauses"] += 1
        st.warn_rarely(
            "paused",
            "ibkr: the consumer is slower than {}: reading paused until it catches up "
            "({} pause(s) so far)",
            st.where(), st.counts["pauses"],
        )  # fmt: skip
        self._resume_task = asyncio.create_task(self._resume_when_room(transport))

    async def _resume_when_room(self, transport: Any) -> None:
        st = self._st
        assert st.edge is not None
        await st.edge.wait_for_room()
        st.paused = False
        if st.watchdog is not None:
            st.watchdog.rearm(st.symbols, st.clock.now())
        if not transport.is_closing():
            transport.resume_reading()

    def cancel(self) -> None:
        """Forget a pending resume (the client is stopping)."""
        if self._resume_task is not None:
            self._resume_task.cancel()


class ReadSplitter:
    """Routes the socket reads of one ``IB`` through ``feed`` (see the module docstring)."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self._installed: tuple[Any, Any, Any] | None = None

    def install(self, ib: Any) -> None:
        """Split ``ib``'s reads; skipped (reads go through whole) if ``size`` is None, if
        the client library's internals differ, or if another source on this ``IB`` did it."""
        size = self.size
        client = getattr(ib, "client", None)
        conn = getattr(client, "conn", None)
        original = getattr(client, "_onSocketHasData", None)
        has_data = getattr(conn, "hasData", None)
        if size is None or original is None or has_data is None or id(has_data) in _SPLIT:
            return

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
        self._installed = (conn, original, feed)

    def remove(self) -> None:
        """Give the reads back to ib_async's own handler (idempotent)."""
        if self._installed is None:
            return
        conn, original, feed = self._installed
        self._installed = None
        conn.hasData -= feed
        conn.hasData += original
        _SPLIT.discard(id(conn.hasData))
