"""``WorkQueue``: the write coordinator's bounded queue, between producers and workers.

Producers ``put`` / ``put_many`` items under the overflow policy (``block`` waits for room,
``drop_oldest`` drops and counts, ``error`` raises ``QueueFullError``); workers take
batches of up to ``batch_size`` with ``take_batch``, which waits at most ``flush_interval``
for a batch to fill (unless someone drains). The high/low watermark callbacks fire once per
crossing. While the coordinator spills (``spilling``), a producer that would wait for room
is told to spool its items instead (``put`` returns True).

Counters: ``submitted`` (items accepted) and ``dropped`` (``drop_oldest``). Plain asyncio,
one event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from mdp_core.coordinator.settings import CoordinatorSettings
from mdp_core.logs import logger

__all__ = ["CoordinatorClosedError", "QueueFullError", "WorkQueue"]

T = TypeVar("T")


class QueueFullError(RuntimeError):
    """``submit`` on a full queue under ``overflow="error"``."""


class CoordinatorClosedError(RuntimeError):
    """``submit`` on a coordinator that is not running (not started, or closing)."""


class WorkQueue(Generic[T]):
    """See the module docstring. ``on_dropped(n)`` is told of every ``drop_oldest`` drop."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        name: str,
        on_dropped: Callable[[int], None],
    ) -> None:
        self.settings = s = settings
        self.name = name
        self.items: deque[T] = deque()
        self.capacity = s.capacity
        self.batch_size = s.batch_size
        self.submitted = 0
        self.dropped = 0
        self.blocked = 0  # producers waiting for room
        self.accepting = False
        self.spilling = False
        self.stopping = False  # take_batch() returns None once the queue is empty
        self.state_name = "starting"  # for error messages: the coordinator's state
        self.flush_requests = 0  # > 0 while someone drains: do not wait to fill batches
        self.high = False  # above the high watermark (until back at the low one)
        self._on_dropped = on_dropped
        self._high_mark = max(1, math.ceil(s.high_watermark * s.capacity))
        self._low_mark = math.floor(s.low_watermark * s.capacity)
        self._nonempty = asyncio.Event()
        self._space = asyncio.Event()
        self._fill_waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self.items)

    # -- producing ----------------------------------------------------------------------

    async def put(self, item: T) -> bool:
        """Queue ``item``; True if the coordinator spills (the caller spools it instead)."""
        items = self.items
        if (len(items) >= self.capacity or not self.accepting) and await self.make_room(1):
            return True
        items.append(item)
        self.submitted += 1
        # The hot path: a few comparisons per item; the rest happens per batch.
        depth = len(items)
        if depth == 1:
            self._nonempty.set()
        elif depth >= self.batch_size and self._fill_waiters:
            self.wake_fillers()
        if depth >= self._high_mark and not self.high:
            self._after_put()
        return False

    async def put_many(self, batch: list[T]) -> list[T]:
        """Queue ``batch``; returns the items not queued because the coordinator spills
        (the caller spools them). Under ``error`` either all fit or none is queued."""
        items = self.items
        overflow = self.settings.overflow
        start = 0
        while start < len(batch):
            if not self.accepting and await self.make_room(1):
                return batch[start:]
            room = self.capacity - len(items)
            if overflow == "drop_oldest":
                room = len(batch) - start
            elif room < len(batch) - start and overflow == "error":
                await self.make_room(len(batch) - start)
            elif room <= 0:
                if await self.make_room(1):
                    return batch[start:]
                continue
            chunk = batch[start : start + room]
            items.extend(chunk)
            self.submitted += len(chunk)
            start += len(chunk)
            excess = len(items) - self.capacity
            if excess > 0:  # drop_oldest
                for _ in range(excess):
                    items.popleft()
                self._count_dropped(excess)
            self._after_put()
        return []

    async def make_room(self, needed: int) -> bool:
        """Apply the overflow policy before adding ``needed`` items. True when the
        coordinator spills (the caller spools its items instead of queueing them)."""
        if self.spilling:
            return True
        if not self.accepting:
            raise CoordinatorClosedError(
                f"coordinator {self.name!r} is {self.state_name}: submit() needs a running "
                "coordinator (use 'async with' or start())"
            )
        items = self.items
        overflow = self.settings.overflow
        if overflow == "error":
            if len(items) + needed > self.capacity:
                raise QueueFullError(
                    f"coordinator {self.name!r} queue is full ({len(items)}/{self.capacity} "
                    f"items, {needed} more offered) and overflow='error'"
                )
        elif overflow == "drop_oldest":
            while len(items) + needed > self.capacity and items:
                items.popleft()
                self._count_dropped(1)
        else:
            self.blocked += 1
            try:
                while len(items) >= self.capacity:
                    self._space.clear()
                    await self._space.wait()
                    if self.spilling:
                        return True
                    if not self.accepting:
                        raise CoordinatorClosedError(
                            f"coordinator {self.name!r} closed while submit() waited for room"
                        )
            finally:
                self.blocked -= 1
        return False

    def release_producers(self) -> None:
        """Wake every producer waiting for room (to spill, or to be told it is closed)."""
        self._space.set()

    def _after_put(self) -> None:
        if not self._nonempty.is_set():
            self._nonempty.set()
        if self._fill_waiters and len(self.items) >= self.batch_size:
            self.wake_fillers()
        if not self.high and len(self.items) >= self._high_mark:
            self.high = True
            self._fire(self.settings.on_high_watermark, "high")

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        self._on_dropped(n)

    def _fire(self, callback: Callable[[int, int], object] | None, which: str) -> None:
        logger.debug("coordinator {} queue at {} watermark", self.name, which)
        if callback is None:
            return
        try:
            callback(len(self.items), self.capacity)
        except Exception as exc:
            logger.error(
                "coordinator {}: {} watermark callback failed: {!r}", self.name, which, exc
            )

    # -- consuming ----------------------------------------------------------------------

    async def take_batch(self) -> list[T] | None:
        """Up to ``batch_size`` items, waiting at most ``flush_interval`` for a batch to fill;
        ``None`` once stopping with an empty queue."""
        items = self.items
        while True:
            while not items:
                if self.stopping:
                    return None
                self._nonempty.clear()
                await self._nonempty.wait()
            if len(items) < self.batch_size and not (self.flush_requests or self.stopping):
                await self._wait_fill()
                if not items:
                    continue
            n = min(self.batch_size, len(items))
            if n == len(items):
                batch = list(items)
                items.clear()
            else:
                popleft = items.popleft
                batch = [popleft() for _ in range(n)]
            if self.blocked:
                self._space.set()
            if self.high and len(items) <= self._low_mark:
                self.high = False
                self._fire(self.settings.on_low_watermark, "low")
            return batch

    def put_back(self, items: list[T]) -> None:
        """Items a crashed worker did not resolve, back at the front (in order)."""
        self.items.extendleft(reversed(items))
        self._nonempty.set()

    def take_all(self) -> list[T]:
        """Every queued item, at once (a shutdown that spools them)."""
        out = list(self.items)
        self.items.clear()
        return out

    def stop(self) -> None:
        """Workers end once the queue is empty: wake them all."""
        self.stopping = True
        self._nonempty.set()
        self.wake_fillers()

    async def _wait_fill(self) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._fill_waiters.append(fut)
        handle = loop.call_later(self.settings.flush_interval, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            if fut in self._fill_waiters:
                self._fill_waiters.remove(fut)

    def wake_fillers(self) -> None:
        """Workers waiting for a batch to fill take what there is now."""
        waiters, self._fill_waiters = self._fill_waiters, []
        for fut in waiters:
            _resolve(fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
