"""WriteCoordinator: a bounded queue, N supervised workers, batches into a sink, losing nothing.

Guarantees (see DESIGN.md section 3 and reliability.md):

- **G1 effectively once.** At-least-once into the sink, whose upsert on the natural key is
  idempotent. An item counts as committed only when ``sink.write`` returned (COMMIT done).
- **G2 conservation.** Every submitted item ends committed, dead-lettered (durably spooled
  to the ``DeadLetterQueue``: written and fsync'd) or dropped by the explicit, counted
  ``drop_oldest`` policy: ``submitted == committed + dead_lettered + dropped`` once drained.
  Not on a worker crash, not on a shutdown timeout, not while the database is down.
- **G3 bounded memory.** The queue holds at most ``capacity`` items (a crashed worker's
  batch is put back at the front, briefly exceeding it by at most one batch); at most
  ``workers x batch_size`` items are in flight. Under ``overflow="block"`` a full queue
  holds producers back in ``submit``; ``drop_oldest`` drops (counted); ``error`` raises
  ``QueueFullError``.
- **G4 poison isolation.** Only transient errors are retried as a batch. Any other write
  error (a data error, SQLSTATE 22xxx/23xxx, but also an unexpected one) is not: the batch
  is bisected until only the offending rows are left; each is dead-lettered with its own
  error (class, SQLSTATE, message) and the rest commit.
- **G5 infrastructure errors** (SQLSTATE 08, 40, 53, 57P, timeouts, sockets; see
  ``mdp_core.errors``) are retried with exponential backoff and full jitter up to
  ``RetryPolicy.max_attempts``, then the batch is spooled. A circuit breaker opens after
  ``circuit_failure_threshold`` consecutive such failures: workers stop calling the
  database and wait; every ``circuit_reset_timeout`` one write probes it. A batch waits on
  an open circuit at most ``RetryPolicy.budget`` seconds past the start of the outage, then
  goes to the spool, so a long outage turns the spool into a write-ahead log instead of
  holding the stream back.
- A worker that dies anyway (the spool itself failed) is restarted by its supervisor
  (counted in ``worker_restarts``) after a backoff; its unfinished batch goes back to the
  front of the queue.
- ``drain()`` waits until everything submitted is committed or dead-lettered. ``close()``
  (leaving ``async with``) drains; if ``drain_timeout`` expires, what is left, queued or in
  flight with an unknown outcome, is spooled to the DLQ (at-least-once: replay is
  idempotent), never dropped. ``spill()`` does that at once and keeps accepting: from then
  on every submitted item goes straight to the spool (a drain that outlasts its budget).
- If the spool itself cannot be written (disk full, read-only), the items are kept in
  memory and counted in ``health().unpersisted``; ``close()`` then raises ``SpoolError``
  (every time it is called, without waiting), so the failure is never mistaken for a
  clean stop.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

from mdp_core.circuit import CircuitBreaker, CircuitState
from mdp_core.dlq import DeadLetterQueue
from mdp_core.errors import Classification, ErrorInfo, classify_error, error_info
from mdp_core.logs import logger
from mdp_core.models import Record
from mdp_core.settings import CoordinatorRuntimeSettings, QueueOverflow

__all__ = [
    "CoordinatorClosedError",
    "CoordinatorRuntimeSettings",
    "CoordinatorSettings",
    "CoordinatorStats",
    "QueueFullError",
    "RetryPolicy",
    "Sink",
    "SpoolError",
    "WriteCoordinator",
]

T = TypeVar("T", bound=Record)
T_contra = TypeVar("T_contra", contravariant=True)
Jitter = Literal["full", "equal", "none"]
# "starting": not started yet
CoordinatorState = Literal["starting", "running", "draining", "stopped"]
_THROUGHPUT_WINDOW = 5.0  # seconds of history behind stats().throughput


class Sink(Protocol[T_contra]):
    """What the coordinator writes to: ``QuotesSink``, ``BarsSink`` or your own.

    ``write`` stores the whole batch in one transaction (all or nothing) and returns how
    many rows were new; it raises on failure (see ``mdp_core.errors`` for how errors are
    read)."""

    @property
    def kind(self) -> str:
        """``"quote"`` or ``"bar"``: what the DLQ records as the items' kind."""
        ...

    async def write(self, batch: Sequence[T_contra], /) -> int: ...


class QueueFullError(RuntimeError):
    """``submit`` on a full queue under ``overflow="error"``."""


class CoordinatorClosedError(RuntimeError):
    """``submit`` on a coordinator that is not running (not started, or closing)."""


class SpoolError(RuntimeError):
    """Items could be written neither to the database nor to the dead-letter spool."""


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient (infrastructure) failures are retried.

    The delay after the n-th failed attempt is drawn from ``[0, cap(n)]`` with
    ``cap(n) = min(max_backoff, initial_backoff * multiplier ** (n - 1))`` ("full" jitter;
    "equal" draws from ``[cap/2, cap]``, "none" waits ``cap``). ``classify(exc)`` returns
    ``"transient"`` or ``"permanent"`` (default ``mdp_core.errors.classify_error``).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: Jitter = "full"
    classify: Callable[[BaseException], Classification] | None = None
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts {self.max_attempts!r}: expected int >= 1")
        if not self.initial_backoff >= 0:
            raise ValueError(
                f"RetryPolicy.initial_backoff {self.initial_backoff!r}: expected seconds >= 0"
            )
        if not self.max_backoff >= self.initial_backoff:
            raise ValueError(
                f"RetryPolicy.max_backoff {self.max_backoff!r}: expected >= initial_backoff"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"RetryPolicy.multiplier {self.multiplier!r}: expected >= 1")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(
                f"RetryPolicy.jitter {self.jitter!r}: expected 'full', 'equal' or 'none'"
            )

    def cap(self, attempt: int) -> float:
        """The largest delay after ``attempt`` failed attempts (1-based)."""
        exponent = min(attempt - 1, 1000)
        try:
            return min(self.max_backoff, self.initial_backoff * self.multiplier**exponent)
        except OverflowError:
            return self.max_backoff

    def backoff(self, attempt: int) -> float:
        """The delay to wait after ``attempt`` failed attempts."""
        cap = self.cap(attempt)
        rng = self.rng or random
        if self.jitter == "full":
            return rng.uniform(0.0, cap)
        if self.jitter == "equal":
            return rng.uniform(cap / 2, cap)
        return cap

    @property
    def budget(self) -> float:
        """The longest the retries of one batch can take: the sum of the delay caps."""
        return sum(self.cap(n) for n in range(1, self.max_attempts))

    def classification(self, exc: BaseException) -> Classification:
        """``classify(exc)``; anything but "transient" counts as "permanent"."""
        kind = (self.classify or classify_error)(exc)
        return "transient" if kind == "transient" else "permanent"


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    """Sizing and behaviour of a ``WriteCoordinator`` (validated on creation).

    ``on_high_watermark(depth, capacity)`` is called once when the queue depth reaches
    ``high_watermark * capacity``; ``on_low_watermark(depth, capacity)`` once when it falls
    back to ``low_watermark * capacity`` (then the high one can fire again). Callbacks run on
    the event loop and must not block; their exceptions are logged, never raised."""

    capacity: int = 20_000
    workers: int = 4
    batch_size: int = 500
    flush_interval: float = 0.25
    drain_timeout: float = 30.0
    overflow: QueueOverflow = "block"
    high_watermark: float = 0.8
    low_watermark: float = 0.5
    on_high_watermark: Callable[[int, int], object] | None = field(default=None, compare=False)
    on_low_watermark: Callable[[int, int], object] | None = field(default=None, compare=False)
    circuit_failure_threshold: int = 5
    circuit_reset_timeout: float = 0.5

    def __post_init__(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CoordinatorSettings.{name} {value!r}: expected an int >= 1")

        positive_int("capacity", self.capacity)
        positive_int("workers", self.workers)
        positive_int("batch_size", self.batch_size)
        positive_int("circuit_failure_threshold", self.circuit_failure_threshold)
        for name in ("flush_interval", "drain_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"CoordinatorSettings.{name} {getattr(self, name)!r}: expected seconds >= 0"
                )
        if not self.circuit_reset_timeout > 0:
            raise ValueError(
                f"CoordinatorSettings.circuit_reset_timeout {self.circuit_reset_timeout!r}: "
                "expected seconds > 0"
            )
        if self.overflow not in ("block", "drop_oldest", "error"):
            raise ValueError(
                f"CoordinatorSettings.overflow {self.overflow!r}: "
                "expected 'block', 'drop_oldest' or 'error'"
            )
        if not 0 < self.low_watermark < self.high_watermark <= 1:
            raise ValueError(
                f"CoordinatorSettings watermarks low={self.low_watermark!r} "
                f"high={self.high_watermark!r}: expected 0 < low < high <= 1"
            )


@dataclass(frozen=True, slots=True)
class CoordinatorStats:
    """A snapshot of a coordinator (``WriteCoordinator.stats()``)."""

    name: str
    state: CoordinatorState
    queue_depth: int
    capacity: int
    in_flight: int
    submitted: int
    committed: int
    new_rows: int
    duplicates_ignored: int
    dead_lettered: int
    dropped: int
    unpersisted: int  # neither committed nor spooled: the spool failed (see SpoolError)
    retries: int
    circuit: CircuitState
    circuit_opened: int
    workers: int
    workers_alive: int
    worker_restarts: int
    blocked_producers: int
    throughput: float  # items committed per second, over the last few seconds
    high_watermark: bool
    last_error: str | None
    last_error_at: datetime | None

    @property
    def pending(self) -> int:
        """Items neither committed, dead-lettered nor dropped yet (``unpersisted`` ones
        included)."""
        return self.submitted - self.committed - self.dead_lettered - self.dropped

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_error_at"] = self.last_error_at.isoformat() if self.last_error_at else None
        data["pending"] = self.pending
        return data


# -- the coordinator -------------------------------------------------------------------


class _Job(Generic[T]):
    """A worker's batch; ``pending`` holds its unresolved segments (bisection splits them)."""

    __slots__ = ("pending",)

    def __init__(self, items: list[T]) -> None:
        self.pending: deque[list[T]] = deque([items])

    def unresolved(self) -> list[T]:
        return [item for segment in self.pending for item in segment]


class WriteCoordinator(Generic[T]):
    """Bounded queue -> N supervised workers -> batches -> ``sink.write``; see the module
    docstring for what it guarantees.

    ``settings`` is a ``CoordinatorSettings`` or a ``CoordinatorRuntimeSettings``;
    ``dlq`` defaults to ``DeadLetterQueue()`` (``$MDP_HOME/dlq``). ``clock`` (monotonic
    seconds) and ``sleep`` drive retries and the circuit breaker, for fake-clock tests.
    """

    def __init__(
        self,
        sink: Sink[T],
        settings: CoordinatorSettings | CoordinatorRuntimeSettings | None = None,
        retry_policy: RetryPolicy | None = None,
        dlq: DeadLetterQueue | None = None,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if isinstance(settings, CoordinatorRuntimeSettings):
            settings = settings.to_settings()
        self.sink = sink
        self.settings = s = settings or CoordinatorSettings()
        self.retry_policy = retry_policy or RetryPolicy()
        self.dlq = dlq if dlq is not None else DeadLetterQueue()
        self.name = name or getattr(sink, "kind", "") or "coordinator"
        self._kind: str | None = getattr(sink, "kind", None)
        self._clock = clock
        self._sleep = sleep
        self._breaker = CircuitBreaker(
            s.circuit_failure_threshold,
            s.circuit_reset_timeout,
            name=self.name,
            clock=clock,
            sleep=sleep,
        )
        self._capacity = s.capacity
        self._batch_size = s.batch_size
        self._high_mark = max(1, math.ceil(s.high_watermark * s.capacity))
        self._low_mark = math.floor(s.low_watermark * s.capacity)
        self._queue: deque[T] = deque()
        self._state: CoordinatorState = "starting"
        self._accepting = False
        self._stopping = False  # workers exit once the queue is empty
        self._no_restart = False
        self._closing = False
        self._spilling = False  # spill(): everything goes straight to the spool
        self._unspooled: list[T] = []  # the spool failed for these (see SpoolError)
        self._spool_failure: BaseException | None = None
        self._flush_requests = 0  # > 0 while someone drains: do not wait to fill batches
        self._nonempty = asyncio.Event()
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._fill_waiters: list[asyncio.Future[None]] = []
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._jobs: dict[int, _Job[T]] = {}
        self._consecutive_crashes = 0
        self._closed = asyncio.Event()
        # counters
        self._submitted = 0
        self._committed = 0
        self._new_rows = 0
        self._dead_lettered = 0
        self._dropped = 0
        self._retries = 0
        self._restarts = 0
        self._blocked = 0
        self._high = False
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._samples: deque[tuple[float, int]] = deque()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers. Idempotent."""
        if self._state != "starting":
            if self._state == "stopped":
                raise CoordinatorClosedError(f"coordinator {self.name!r} is closed")
            return
        self._state = "running"
        self._accepting = True
        self._samples.append((self._clock(), 0))
        for wid in range(self.settings.workers):
            self._spawn(wid, 0.0)
        logger.debug(
            "coordinator {} started: {} workers, batch {}, capacity {}",
            self.name,
            self.settings.workers,
            self._batch_size,
            self._capacity,
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every item submitted so far is committed or dead-lettered (partial
        batches are flushed at once). Raises ``TimeoutError`` after ``timeout`` seconds."""
        if self._state == "starting":
            return
        self._flush_requests += 1
        self._wake_fillers()
        try:
            async with asyncio.timeout(timeout):
                await self._wait_idle()
        except TimeoutError:
            raise TimeoutError(
                f"coordinator {self.name!r}: drain timed out after {timeout}s with "
                f"{self._pending()} items pending"
            ) from None
        finally:
            self._flush_requests -= 1

    async def close(self) -> None:
        """Stop accepting, drain (up to ``drain_timeout``), spool what is left, stop.

        Raises ``SpoolError`` if items could not be spooled (again on every later call)."""
        if self._state == "starting":
            self._state = "stopped"
            self._closed.set()
            return
        if self._closing:
            await self._closed.wait()
            self._raise_if_unpersisted()
            return
        self._closing = True
        self._state = "draining"
        self._accepting = False
        self._space.set()  # blocked producers: raise CoordinatorClosedError (or spill)
        self._flush_requests += 1
        self._wake_fillers()
        timed_out = False
        cancelled = False
        try:
            async with asyncio.timeout(self.settings.drain_timeout):
                await self._wait_idle()
        except TimeoutError:
            timed_out = True
        except asyncio.CancelledError:
            cancelled = True  # still spool what is left before giving up
        try:
            await self._stop_workers(cancel=timed_out or cancelled)
            self._spool_leftovers("drain timeout" if timed_out else "shutdown")
        finally:
            self._state = "stopped"
            self._closed.set()
        h = self.stats()
        logger.info(
            "coordinator {} stopped: submitted {}, committed {}, dead-lettered {}, dropped {}",
            self.name,
            h.submitted,
            h.committed,
            h.dead_lettered,
            h.dropped,
        )
        if cancelled:
            raise asyncio.CancelledError
        self._raise_if_unpersisted()

    async def spill(self, reason: str = "drain budget spent") -> None:
        """Stop writing to the database: spool what is queued and in flight now (in-flight
        writes are cancelled: their outcome is unknown, so they may also be committed), and
        from now on spool every submitted item at once. For a drain that outlasts its budget
        while producers still hold items; ``close()`` afterwards finds nothing to drain."""
        if self._spilling or self._state in ("starting", "stopped"):
            return
        logger.warning("coordinator {}: {}: spooling everything from now on", self.name, reason)
        self._spilling = True
        self._accepting = False  # the slow path of submit() spools
        self._space.set()  # producers waiting for room spool their items instead
        await self._stop_workers(cancel=True)
        self._spool_leftovers(reason)

    async def _stop_workers(self, *, cancel: bool) -> None:
        """Let the workers finish the queue (or cancel them) and wait until they are gone."""
        self._stopping = True
        self._nonempty.set()
        self._wake_fillers()
        if cancel:
            self._no_restart = True
            for task in self._tasks.values():
                task.cancel()
        while True:
            running = [t for t in self._tasks.values() if not t.done()]
            if not running:
                return
            try:
                await asyncio.wait(running)
            except asyncio.CancelledError:
                self._no_restart = True
                for task in running:
                    task.cancel()

    def _spool_leftovers(self, reason: str) -> None:
        """After the workers stopped: spool whatever is unresolved (synchronously, so even a
        cancelled close finishes it)."""
        in_flight = [item for job in self._jobs.values() for item in job.unresolved()]
        self._jobs.clear()
        queued = list(self._queue)
        self._queue.clear()
        leftovers = in_flight + queued
        if not leftovers:
            return
        error = ErrorInfo(
            type="DrainTimeout",
            sqlstate=None,
            message=(
                f"{reason} after {self.settings.drain_timeout}s: {len(queued)} items queued, "
                f"{len(in_flight)} in flight (outcome unknown, may also be committed)"
            ),
        )
        if self._spool_now(leftovers, error, 0):
            logger.warning(
                "coordinator {}: {}; {} items spooled to {}",
                self.name,
                reason,
                len(leftovers),
                self.dlq,
            )

    def _spool_now(self, items: list[T], error: BaseException | ErrorInfo, attempts: int) -> bool:
        """Dead-letter ``items`` synchronously; if the spool fails, keep them as unpersisted
        and return False."""
        try:
            self.dlq.put(items, error, attempts, self._kind, stream=self.name)
        except Exception as exc:
            self._note_unpersisted(items, exc)
            return False
        self._dead_lettered += len(items)
        self._check_idle()
        return True

    def _raise_if_unpersisted(self) -> None:
        if self._unspooled:
            failure = self._spool_failure
            raise SpoolError(
                f"coordinator {self.name!r}: {len(self._unspooled)} items could not be written "
                f"to the dead-letter spool in {self.dlq.directory} "
                f"({error_info(failure) if failure else 'unknown error'}): they are neither "
                "committed nor dead-lettered (kept in memory until this process exits)"
            )

    # -- producing ----------------------------------------------------------------------

    async def submit(self, item: T) -> None:
        """Queue ``item``. Under ``overflow="block"`` waits while the queue is full; if
        cancelled while waiting, the item is spooled rather than lost."""
        queue = self._queue
        if (len(queue) >= self._capacity or not self._accepting) and await self._room_for([item]):
            await self._spill_items([item])
            return
        queue.append(item)
        self._submitted += 1
        # The hot path: a few comparisons per item; the rest happens per batch.
        depth = len(queue)
        if depth == 1:
            self._nonempty.set()
        elif depth >= self._batch_size and self._fill_waiters:
            self._wake_fillers()
        if depth >= self._high_mark and not self._high:
            self._after_put()

    async def submit_many(self, items: Iterable[T]) -> None:
        """Queue several items at once (cheaper than one ``submit`` each). Under ``error``
        either all fit or none is queued. If cancelled while waiting for room, the items not
        queued yet are spooled rather than lost."""
        batch = items if isinstance(items, list) else list(items)
        queue = self._queue
        overflow = self.settings.overflow
        start = 0
        while start < len(batch):
            if not self._accepting and await self._room_for(batch[start:]):
                await self._spill_items(batch[start:])
                return
            room = self._capacity - len(queue)
            if overflow == "drop_oldest":
                room = len(batch) - start
            elif room < len(batch) - start and overflow == "error":
                await self._make_room(len(batch) - start)
            elif room <= 0:
                if await self._room_for(batch[start:]):
                    await self._spill_items(batch[start:])
                    return
                continue
            chunk = batch[start : start + room]
            queue.extend(chunk)
            self._submitted += len(chunk)
            start += len(chunk)
            excess = len(queue) - self._capacity
            if excess > 0:  # drop_oldest
                for _ in range(excess):
                    queue.popleft()
                self._count_dropped(excess)
            self._after_put()

    async def _room_for(self, items: list[T]) -> bool:
        """``_make_room(1)`` for a producer holding ``items``: if it is cancelled while it
        waits, the items are spooled (counted) before the cancellation goes on."""
        try:
            return await self._make_room(1)
        except asyncio.CancelledError:
            self.spool_unsubmitted(items, "cancelled while waiting for room")
            raise

    def spool_unsubmitted(self, items: list[T], reason: str) -> None:
        """Count ``items`` as submitted and dead-letter them at once, synchronously (a
        shutdown that cannot wait for room: what a producer still holds must not be
        lost). If the spool fails they are kept as unpersisted."""
        if not items:
            return
        self._submitted += len(items)
        error = ErrorInfo(type="Shutdown", sqlstate=None, message=reason)
        self._spool_now(items, error, 0)

    async def _make_room(self, needed: int) -> bool:
        """Apply the overflow policy before adding ``needed`` items. Returns True when the
        coordinator spills (the caller spools its items instead of queueing them)."""
        if self._spilling:
            return True
        if not self._accepting:
            raise CoordinatorClosedError(
                f"coordinator {self.name!r} is {self._state}: submit() needs a running "
                "coordinator (use 'async with' or start())"
            )
        queue = self._queue
        overflow = self.settings.overflow
        if overflow == "error":
            if len(queue) + needed > self._capacity:
                raise QueueFullError(
                    f"coordinator {self.name!r} queue is full ({len(queue)}/{self._capacity} "
                    f"items, {needed} more offered) and overflow='error'"
                )
        elif overflow == "drop_oldest":
            while len(queue) + needed > self._capacity and queue:
                queue.popleft()
                self._count_dropped(1)
        else:
            self._blocked += 1
            try:
                while len(queue) >= self._capacity:
                    self._space.clear()
                    await self._space.wait()
                    if self._spilling:
                        return True
                    if not self._accepting:
                        raise CoordinatorClosedError(
                            f"coordinator {self.name!r} closed while submit() waited for room"
                        )
            finally:
                self._blocked -= 1
        return False

    def _after_put(self) -> None:
        queue = self._queue
        if not self._nonempty.is_set():
            self._nonempty.set()
        if self._fill_waiters and len(queue) >= self._batch_size:
            self._wake_fillers()
        if not self._high and len(queue) >= self._high_mark:
            self._high = True
            self._fire(self.settings.on_high_watermark, "high")

    def _count_dropped(self, n: int) -> None:
        self._dropped += n
        self._check_idle()

    def _fire(self, callback: Callable[[int, int], object] | None, which: str) -> None:
        logger.debug("coordinator {} queue at {} watermark", self.name, which)
        if callback is None:
            return
        try:
            callback(len(self._queue), self._capacity)
        except Exception as exc:
            logger.error(
                "coordinator {}: {} watermark callback failed: {!r}", self.name, which, exc
            )

    # -- consuming ----------------------------------------------------------------------

    async def _take_batch(self) -> list[T] | None:
        """Up to ``batch_size`` items, waiting at most ``flush_interval`` for a batch to fill;
        ``None`` once stopping with an empty queue."""
        queue = self._queue
        while True:
            while not queue:
                if self._stopping:
                    return None
                self._nonempty.clear()
                await self._nonempty.wait()
            if len(queue) < self._batch_size and not (self._flush_requests or self._stopping):
                await self._wait_fill()
                if not queue:
                    continue
            n = min(self._batch_size, len(queue))
            if n == len(queue):
                batch = list(queue)
                queue.clear()
            else:
                popleft = queue.popleft
                batch = [popleft() for _ in range(n)]
            if self._blocked:
                self._space.set()
            if self._high and len(queue) <= self._low_mark:
                self._high = False
                self._fire(self.settings.on_low_watermark, "low")
            return batch

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

    def _wake_fillers(self) -> None:
        waiters, self._fill_waiters = self._fill_waiters, []
        for fut in waiters:
            _resolve(fut)

    def _spawn(self, wid: int, delay: float) -> None:
        task = asyncio.create_task(self._worker(wid, delay), name=f"{self.name}-worker-{wid}")
        self._tasks[wid] = task
        task.add_done_callback(lambda t: self._on_worker_done(wid, t))

    async def _worker(self, wid: int, delay: float) -> None:
        if delay > 0:
            await self._sleep(delay)
        while True:
            items = await self._take_batch()
            if items is None:
                return
            job: _Job[T] = _Job(items)
            self._jobs[wid] = job
            await self._run_job(job)
            del self._jobs[wid]
            self._consecutive_crashes = 0

    def _on_worker_done(self, wid: int, task: asyncio.Task[None]) -> None:
        """Supervisor: restart a worker that crashed; put its unfinished batch back."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        cause = exc
        self._restarts += 1
        self._consecutive_crashes += 1
        self._note_error(cause)
        job = self._jobs.pop(wid, None)
        if job is not None:
            self._queue.extendleft(reversed(job.unresolved()))
            self._nonempty.set()
        if self._no_restart:
            return
        delay = self.retry_policy.cap(self._consecutive_crashes)
        logger.opt(exception=cause).error(
            "coordinator {} worker {} crashed ({}); restarting in {:.2f}s",
            self.name,
            wid,
            type(cause).__name__,
            delay,
        )
        self._spawn(wid, delay)

    async def _run_job(self, job: _Job[T]) -> None:
        """Resolve every segment of ``job``: committed, bisected, or dead-lettered."""
        pending = job.pending
        while pending:
            segment = pending[0]
            outcome, value, attempts, first_failed = await self._write(segment)
            if outcome == "ok":
                pending.popleft()
                self._record_commit(len(segment), value)
            elif outcome == "permanent" and len(segment) > 1:
                mid = len(segment) // 2
                pending.popleft()
                pending.appendleft(segment[mid:])
                pending.appendleft(segment[:mid])
            else:
                assert isinstance(value, BaseException | ErrorInfo)
                await self._spool(job, segment, value, attempts, first_failed)

    async def _write(self, segment: list[T]) -> tuple[str, Any, int, datetime | None]:
        """Write ``segment`` with retries. Returns (outcome, new rows or error, attempts,
        first failure time); outcome is "ok", "permanent" or "exhausted"."""
        breaker = self._breaker
        policy = self.retry_policy
        attempt = 0
        first_failed: datetime | None = None
        last: BaseException | None = None
        while True:
            probing = False
            if breaker.state != "closed":
                # Only record_failure() leaves "closed": it sets outage_since and last_error.
                assert breaker.outage_since is not None
                if not await breaker.acquire(breaker.outage_since + policy.budget):
                    return "exhausted", last or breaker.last_error, attempt, first_failed
                probing = breaker.state == "half_open"
            attempt += 1
            try:
                new_rows = await self.sink.write(segment)
            except Exception as exc:
                failure: Exception = exc
            except BaseException:
                if probing:
                    breaker.release_probe()
                raise
            else:
                breaker.record_success()
                return "ok", new_rows, attempt, first_failed
            first_failed = first_failed or datetime.now(UTC)
            self._note_error(failure)
            kind = policy.classification(failure)
            if kind != "transient":
                breaker.record_success()  # the database answered, or it is not about it
                return kind, failure, attempt, first_failed
            breaker.record_failure(failure)
            last = failure
            if attempt >= policy.max_attempts:
                return "exhausted", failure, attempt, first_failed
            self._retries += 1
            delay = policy.backoff(attempt)
            logger.debug(
                "coordinator {}: {} on a batch of {} (attempt {}), retrying in {:.3f}s",
                self.name,
                type(failure).__name__,
                len(segment),
                attempt,
                delay,
            )
            await self._sleep(delay)

    async def _spool(
        self,
        job: _Job[T],
        segment: list[T],
        error: BaseException | ErrorInfo,
        attempts: int,
        first_failed: datetime | None,
    ) -> None:
        """Dead-letter ``segment`` (the head of ``job.pending``) durably, off the event loop.
        A failed spool raises (the worker restarts; the segment goes back to the queue)."""
        cancelled = await self._put_off_loop(segment, error, attempts, first_failed)
        job.pending.popleft()
        self._dead_lettered += len(segment)
        self._check_idle()
        logger.warning(
            "coordinator {}: {} items dead-lettered after {} attempts: {}",
            self.name,
            len(segment),
            attempts,
            error_info(error),
        )
        if cancelled:
            raise asyncio.CancelledError

    async def _spill_items(self, items: list[T]) -> None:
        """``submit`` while spilling: count ``items`` and spool them at once (off the loop);
        if the spool fails they are kept as unpersisted."""
        self._submitted += len(items)
        error = ErrorInfo(type="DrainTimeout", sqlstate=None, message="spilled while draining")
        try:
            cancelled = await self._put_off_loop(items, error, 0, None)
        except Exception as exc:
            self._note_unpersisted(items, exc)
            return
        self._dead_lettered += len(items)
        self._check_idle()
        if cancelled:
            raise asyncio.CancelledError

    async def _put_off_loop(
        self,
        items: list[T],
        error: BaseException | ErrorInfo,
        attempts: int,
        first_failed: datetime | None,
    ) -> bool:
        """``dlq.put`` in a thread; raises what it raises. A cancellation waits for the write
        to finish (so the items are counted exactly once) and is returned as True for the
        caller to re-raise once it has counted them."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            None,
            lambda: self.dlq.put(
                items, error, attempts, self._kind, stream=self.name, first_failed_at=first_failed
            ),
        )
        cancelled = False
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                cancelled = True
        fut.result()
        return cancelled

    def _note_unpersisted(self, items: list[T], exc: BaseException) -> None:
        self._unspooled.extend(items)
        self._spool_failure = exc
        logger.error(
            "coordinator {}: {} items could not be spooled to {}: {}; they are held in memory, "
            "neither committed nor dead-lettered",
            self.name,
            len(items),
            self.dlq,
            error_info(exc),
        )

    def _record_commit(self, n: int, new_rows: int) -> None:
        self._committed += n
        self._new_rows += new_rows
        self._samples.append((self._clock(), self._committed))
        self._prune_samples()
        self._check_idle()

    def _prune_samples(self) -> None:
        """Keep the samples of the throughput window, plus the last one before it."""
        samples = self._samples
        cutoff = self._clock() - _THROUGHPUT_WINDOW
        while len(samples) > 1 and samples[1][0] <= cutoff:
            samples.popleft()

    # -- accounting ---------------------------------------------------------------------

    def _pending(self) -> int:
        return self._submitted - self._committed - self._dead_lettered - self._dropped

    def _check_idle(self) -> None:
        if self._pending() == 0:
            self._idle.set()

    async def _wait_idle(self) -> None:
        while self._pending() > 0:
            self._idle.clear()
            await self._idle.wait()

    def _note_error(self, exc: BaseException) -> None:
        info = error_info(exc)
        self._last_error = f"{info.type}: {info.message}"
        self._last_error_at = datetime.now(UTC)

    def _throughput(self) -> float:
        """Items committed per second over the last ``_THROUGHPUT_WINDOW`` seconds."""
        self._prune_samples()
        if not self._samples:
            return 0.0
        now = self._clock()
        t0, c0 = self._samples[0]
        t0 = max(t0, now - _THROUGHPUT_WINDOW)  # no commit between the sample and t0
        span = now - t0
        return (self._committed - c0) / span if span > 0 else 0.0

    def stats(self) -> CoordinatorStats:
        """A snapshot of the state, counters and recent throughput."""
        in_flight = sum(len(s) for job in self._jobs.values() for s in job.pending)
        return CoordinatorStats(
            name=self.name,
            state=self._state,
            queue_depth=len(self._queue),
            capacity=self._capacity,
            in_flight=in_flight,
            submitted=self._submitted,
            committed=self._committed,
            new_rows=self._new_rows,
            duplicates_ignored=self._committed - self._new_rows,
            dead_lettered=self._dead_lettered,
            dropped=self._dropped,
            unpersisted=len(self._unspooled),
            retries=self._retries,
            circuit=self._breaker.state,
            circuit_opened=self._breaker.times_opened,
            workers=self.settings.workers,
            workers_alive=sum(1 for t in self._tasks.values() if not t.done()),
            worker_restarts=self._restarts,
            blocked_producers=self._blocked,
            throughput=self._throughput(),
            high_watermark=self._high,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
        )

    def __repr__(self) -> str:
        h = self.stats()
        return (
            f"WriteCoordinator({self.name!r}, state={h.state}, depth={h.queue_depth}, "
            f"in_flight={h.in_flight}, committed={h.committed}, "
            f"dead_lettered={h.dead_lettered}, dropped={h.dropped}, circuit={h.circuit})"
        )


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
