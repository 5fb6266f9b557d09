"""A bounded, single-event-loop channel between a provider and its consumers.

Items leave in the order they came (FIFO). Overflow policies (what happens when a full
channel receives another item):

- ``block``: ``put`` waits for space; ``offer`` returns ``False`` and counts a rejection;
  ``push`` (a producer that cannot wait but can pause its input, e.g. stop reading its
  socket) accepts the item beyond the capacity and returns ``False``: "pause until
  ``wait_for_room()``". Nothing is ever lost under ``block``.
- ``drop_oldest``: the oldest buffered item is discarded (counted in ``dropped``).
- ``conflate``: the newest item replaces the pending item with the same key (``key_fn``,
  by default the item's ``symbol``) in its place in the queue, so only the latest value per
  key waits (counted in ``conflated``); a key with nothing pending makes room by
  discarding the oldest item (counted in ``dropped``). Below the capacity nothing is
  conflated: a consumer that keeps up sees every item.

Accounting: ``accepted == delivered + depth + dropped + conflated`` at every moment, and
every ``offer`` that returned ``False`` is counted in ``rejected``. Nothing disappears
without a counter.

A producer ends the stream with ``close()``; ``close(error)`` makes consumers raise
``error`` once the buffered items are drained, so a provider failure is never a silent end.
"""

from __future__ import annotations

import asyncio
import operator
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

__all__ = ["Channel", "ChannelClosed", "ChannelOverflow", "ChannelStats"]

T = TypeVar("T")
ChannelOverflow = Literal["block", "drop_oldest", "conflate"]
_POLICIES = ("block", "drop_oldest", "conflate")


class ChannelClosed(Exception):
    """Raised by ``put``/``get`` on a closed channel (``get`` only once it is drained)."""


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """A snapshot of a channel's counters."""

    capacity: int
    depth: int
    high_water: int
    accepted: int
    delivered: int
    dropped: int
    conflated: int
    rejected: int
    closed: bool


class Channel(Generic[T]):
    """Bounded FIFO channel with an overflow policy; see the module docstring.

    Use from one event loop. ``offer`` and ``push`` are synchronous and never block, for
    provider callbacks that cannot await; ``offer_threadsafe`` hands an item over from
    another thread.
    """

    def __init__(
        self,
        capacity: int,
        overflow: ChannelOverflow = "block",
        key_fn: Callable[[T], Hashable] | None = None,
    ) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"Channel capacity {capacity!r} is invalid: expected an int >= 1")
        if overflow not in _POLICIES:
            raise ValueError(
                f"Channel overflow {overflow!r} is invalid: expected one of {', '.join(_POLICIES)}"
            )
        if key_fn is not None and overflow != "conflate":
            raise ValueError("Channel key_fn is only used with overflow='conflate'")
        self.capacity = capacity
        self.overflow: ChannelOverflow = overflow
        self._conflate = overflow == "conflate"
        self._key_fn: Callable[[T], Hashable] = key_fn or operator.attrgetter("symbol")
        # Under conflate the queue holds [item, key] entries, and _pending maps each key to
        # its newest entry still queued (so it can be replaced in place).
        self._items: deque[Any] = deque()
        self._pending: dict[Hashable, list[Any]] = {}
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._high_water = 0
        self._accepted = 0
        self._delivered = 0
        self._dropped = 0
        self._conflated = 0
        self._rejected = 0

    # -- state -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> ChannelStats:
        """A snapshot of the counters."""
        return ChannelStats(
            capacity=self.capacity,
            depth=len(self._items),
            high_water=self._high_water,
            accepted=self._accepted,
            delivered=self._delivered,
            dropped=self._dropped,
            conflated=self._conflated,
            rejected=self._rejected,
            closed=self._closed,
        )

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"Channel(capacity={s.capacity}, overflow={self.overflow!r}, depth={s.depth}, "
            f"dropped={s.dropped}, conflated={s.conflated}, rejected={s.rejected}, "
            f"closed={s.closed})"
        )

    # -- producing ---------------------------------------------------------------------

    def offer(self, item: T) -> bool:
        """Add ``item`` without waiting; return whether it was accepted.

        Under ``block`` a full channel rejects (counted); the other policies always accept.
        Raises ``ChannelClosed`` if the channel is closed.
        """
        if self._closed:
            raise ChannelClosed("offer() on a closed channel")
        items = self._items
        if len(items) >= self.capacity:
            if self.overflow == "block":
                self._rejected += 1
                return False
            if self._conflate:
                return self._conflate_full(item)
            items.popleft()
            self._dropped += 1
        if self._conflate:
            self._append_entry(item)
            return True
        # the hot path, inlined: append, count, wake a waiting consumer
        items.append(item)
        self._accepted += 1
        if len(items) > self._high_water:
            self._high_water = len(items)
        if self._getters:
            self._wake(self._getters)
        return True

    def push(self, item: T) -> bool:
        """Add ``item`` from a producer that cannot wait but can pause its input.

        Always accepted (``ChannelClosed`` if closed). Under ``block`` it returns ``False``
        once the channel is full (this item filled it, or went beyond the capacity): the
        producer must stop its input (e.g. pause reading its socket) until
        ``wait_for_room()`` returns; the overshoot is bounded by what the producer had in
        hand when it paused. The other policies apply as for ``offer`` and return
        ``True``."""
        if self._closed:
            raise ChannelClosed("push() on a closed channel")
        items = self._items
        if len(items) >= self.capacity and self.overflow != "block":
            return self.offer(item)
        if self._conflate:
            self._append_entry(item)
            return True
        # the hot path, inlined: append, count, wake a waiting consumer
        items.append(item)
        self._accepted += 1
        depth = len(items)
        if depth > self._high_water:
            self._high_water = depth
        if self._getters:
            self._wake(self._getters)
        return depth < self.capacity or self.overflow != "block"

    def _append_entry(self, item: T) -> None:
        """Append under ``conflate``: an ``[item, key]`` entry, remembered as its key's
        newest pending one."""
        items = self._items
        key = self._key_fn(item)
        entry = [item, key]
        self._pending[key] = entry
        items.append(entry)
        self._accepted += 1
        if len(items) > self._high_water:
            self._high_water = len(items)
        if self._getters:
            self._wake(self._getters)

    def _conflate_full(self, item: T) -> bool:
        key = self._key_fn(item)
        entry = self._pending.get(key)
        self._accepted += 1
        if entry is not None:
            entry[0] = item  # keeps the pending item's place in the queue
            self._conflated += 1
            return True
        oldest: list[Any] = self._items.popleft()
        oldest_key = oldest[1]
        if self._pending.get(oldest_key) is oldest:
            del self._pending[oldest_key]
        self._dropped += 1
        self._accepted -= 1  # _append_entry counts it
        self._append_entry(item)
        return True

    async def put(self, item: T) -> None:
        """Add ``item``; under ``block`` wait while the channel is full.

        Raises ``ChannelClosed`` if the channel is (or becomes, while waiting) closed.
        """
        while self.overflow == "block" and len(self._items) >= self.capacity:
            if self._closed:
                raise ChannelClosed("put() on a closed channel")
            await self._wait(self._putters)
        self.offer(item)

    async def wait_for_room(self) -> None:
        """Return once the channel holds fewer items than its capacity (or is closed)."""
        while len(self._items) >= self.capacity and not self._closed:
            await self._wait(self._putters)

    def offer_threadsafe(self, item: T) -> None:
        """Hand ``item`` to the channel's loop from another thread (applies ``offer``)."""
        if self._loop is None:
            raise RuntimeError("offer_threadsafe() needs bind_loop() (or one await) first")
        self._loop.call_soon_threadsafe(self._offer_quietly, item)

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Remember the event loop that consumes this channel (for ``offer_threadsafe``)."""
        self._loop = loop or asyncio.get_running_loop()

    def _offer_quietly(self, item: T) -> None:
        if self._closed:
            self._rejected += 1
        else:
            self.offer(item)

    def close(self, error: BaseException | None = None) -> None:
        """End the stream. Buffered items are still delivered; then consumers stop, or raise
        ``error`` if one is given. Closing twice keeps the first error."""
        if self._closed:
            if error is not None and self._error is None:
                self._error = error
            return
        self._closed = True
        self._error = error
        for waiters in (self._getters, self._putters):
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(None)

    # -- consuming ---------------------------------------------------------------------

    def get_nowait(self) -> T:
        """Take the next item; raise ``asyncio.QueueEmpty`` if none is buffered, or the
        close error / ``ChannelClosed`` once closed and drained."""
        items = self._items
        if not items:
            self._raise_if_finished()
            raise asyncio.QueueEmpty
        item: Any = items.popleft()
        if self._conflate:
            entry: list[Any] = item
            item = entry[0]
            if self._pending.get(entry[1]) is entry:
                del self._pending[entry[1]]
        self._delivered += 1
        if self._putters:
            self._wake(self._putters)
        return item

    def drain_nowait(self) -> list[T]:
        """Take every buffered item at once (for a shutdown that must spool them)."""
        out: list[T] = []
        while self._items:
            out.append(self.get_nowait())
        return out

    async def get(self) -> T:
        """Wait for and take the next item (see ``get_nowait`` for the end of the stream)."""
        while True:
            try:
                return self.get_nowait()
            except asyncio.QueueEmpty:
                await self._wait(self._getters)

    async def get_batch(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Wait for at least one item (up to ``timeout`` seconds; ``None`` waits forever), then
        return up to ``max_items`` buffered items without further waiting.

        Returns ``[]`` on timeout. At the end of the stream raises like ``get``."""
        if not self._items:
            self._raise_if_finished()
            try:
                await asyncio.wait_for(self._wait(self._getters), timeout)
            except TimeoutError:
                return []
        batch: list[T] = []
        try:
            while len(batch) < max_items:
                batch.append(self.get_nowait())
        except asyncio.QueueEmpty:
            pass
        except BaseException:
            if not batch:
                raise
        return batch

    async def iter(self) -> AsyncIterator[T]:
        """Iterate until the channel is closed and drained; then raise the close error, if any."""
        get_nowait = self.get_nowait
        while True:
            try:
                item = get_nowait()
            except asyncio.QueueEmpty:
                await self._wait(self._getters)
                continue
            except ChannelClosed:
                return
            yield item

    async def iter_batches(
        self, max_items: int, max_wait: float | None = None
    ) -> AsyncIterator[list[T]]:
        """Iterate over non-empty batches of up to ``max_items`` (see ``get_batch``)."""
        while True:
            try:
                batch = await self.get_batch(max_items, max_wait)
            except ChannelClosed:
                return
            if batch:
                yield batch

    def __aiter__(self) -> AsyncIterator[T]:
        return self.iter()

    # -- internals ---------------------------------------------------------------------

    def _raise_if_finished(self) -> None:
        if self._closed:
            if self._error is not None:
                raise self._error
            raise ChannelClosed("channel closed")

    async def _wait(self, waiters: deque[asyncio.Future[None]]) -> None:
        if self._closed:
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            # Woken and cancelled at once: pass the wake-up on so it is not lost.
            if fut.done() and not fut.cancelled():
                self._wake(waiters)
            raise
        finally:
            if fut in waiters:
                waiters.remove(fut)

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
