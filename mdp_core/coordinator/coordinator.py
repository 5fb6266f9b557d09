"""``WriteCoordinator``: a bounded queue, N supervised workers, batches into a sink, losing
nothing. The queue is ``WorkQueue``, the bisection of a failing batch ``mdp_core.bisection``,
the dead-lettering ``Spooler``.

Guarantees:

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
  memory and counted in ``stats().unpersisted``; ``close()`` then raises ``SpoolError``
  (every time it is called, without waiting), so the failure is never mistaken for a
  clean stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Generic, Self, TypeVar

from mdp_core.bisection import Attempt, Bisection, Next
from mdp_core.circuit import CircuitBreaker
from mdp_core.coordinator.queue import CoordinatorClosedError, WorkQueue
from mdp_core.coordinator.settings import CoordinatorSettings
from mdp_core.coordinator.spooler import Spooler
from mdp_core.coordinator.stats import (
    CommitRate,
    CoordinatorState,
    CoordinatorStats,
    write_path_counts,
)
from mdp_core.dlq import DeadLetterQueue
from mdp_core.errors import ErrorInfo, error_info
from mdp_core.logs import logger
from mdp_core.models import Record
from mdp_core.retry import RetryPolicy
from mdp_core.settings import CoordinatorRuntimeSettings
from mdp_core.sink import Sink

__all__ = ["WriteCoordinator"]

T = TypeVar("T", bound=Record)


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
            settings = CoordinatorSettings.from_env(settings)
        self.sink = sink
        self.settings = s = settings or CoordinatorSettings()
        self.retry_policy = retry_policy or RetryPolicy()
        self.dlq = dlq if dlq is not None else DeadLetterQueue()
        self.name = name or getattr(sink, "kind", "") or "coordinator"
        self._clock = clock
        self._sleep = sleep
        self._breaker = CircuitBreaker(
            s.circuit_failure_threshold, s.circuit_reset_timeout, name=self.name,
            clock=clock, sleep=sleep,
        )  # fmt: skip
        self._queue: WorkQueue[T] = WorkQueue(s, self.name, lambda n: self._check_idle())
        self._spooler: Spooler[T] = Spooler(self.dlq, getattr(sink, "kind", None), self.name)
        self._state: CoordinatorState = "starting"
        self._no_restart = False
        self._closing = False
        self._idle = asyncio.Event()
        self._closed = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._jobs: dict[int, Bisection[T]] = {}  # the batch each worker is writing
        self._consecutive_crashes = 0
        self._committed = 0
        self._new_rows = 0
        self._dead_lettered = 0
        self._retries = 0
        self._restarts = 0
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._rate = CommitRate(clock)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers. Idempotent."""
        if self._state != "starting":
            if self._state == "stopped":
                raise CoordinatorClosedError(f"coordinator {self.name!r} is closed")
            return
        self._set_state("running")
        self._queue.accepting = True
        self._rate.start()
        for wid in range(self.settings.workers):
            self._spawn(wid, 0.0)
        logger.debug(
            "coordinator {} started: {} workers, batch {}, capacity {}",
            self.name, self.settings.workers, self.settings.batch_size, self.settings.capacity,
        )  # fmt: skip

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
        queue = self._queue
        queue.flush_requests += 1
        queue.wake_fillers()
        try:
            async with asyncio.timeout(timeout):
                await self._wait_idle()
        except TimeoutError:
            raise TimeoutError(
                f"coordinator {self.name!r}: drain timed out after {timeout}s with "
                f"{self._pending()} items pending"
            ) from None
        finally:
            queue.flush_requests -= 1

    async def close(self) -> None:
        """Stop accepting, drain (up to ``drain_timeout``), spool what is left, stop.

        Raises ``SpoolError`` if items could not be spooled (again on every later call)."""
        if self._state == "starting":
            self._set_state("stopped")
            self._closed.set()
            return
        if self._closing:
            await self._closed.wait()
            self._spooler.raise_if_unpersisted()
            return
        self._closing = True
        self._set_state("draining")
        queue = self._queue
        queue.accepting = False
        queue.release_producers()  # blocked producers: raise CoordinatorClosedError (or spill)
        queue.flush_requests += 1
        queue.wake_fillers()
        timed_out = cancelled = False
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
            self._set_state("stopped")
            self._closed.set()
        h = self.stats()
        logger.info(
            "coordinator {} stopped: submitted {}, committed {}, dead-lettered {}, dropped {}",
            self.name, h.submitted, h.committed, h.dead_lettered, h.dropped,
        )  # fmt: skip
        if cancelled:
            raise asyncio.CancelledError
        self._spooler.raise_if_unpersisted()

    async def spill(self, reason: str = "drain budget spent") -> None:
        """Stop writing to the database: spool what is queued and in flight now (in-flight
        writes are cancelled: their outcome is unknown, so they may also be committed), and
        from now on spool every submitted item at once. For a drain that outlasts its budget
        while producers still hold items; ``close()`` afterwards finds nothing to drain."""
        queue = self._queue
        if queue.spilling or self._state in ("starting", "stopped"):
            return
        logger.warning("coordinator {}: {}: spooling everything from now on", self.name, reason)
        queue.spilling = True
        queue.accepting = False  # the slow path of submit() spools
        queue.release_producers()  # producers waiting for room spool their items instead
        await self._stop_workers(cancel=True)
        self._spool_leftovers(reason)

    def _set_state(self, state: CoordinatorState) -> None:
        self._state = state
        self._queue.state_name = state

    async def _stop_workers(self, *, cancel: bool) -> None:
        """Let the workers finish the queue (or cancel them) and wait until they are gone."""
        self._queue.stop()
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
        queued = self._queue.take_all()
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
        if self._spool_now(leftovers, error):
            logger.warning(
                "coordinator {}: {}; {} items spooled to {}",
                self.name, reason, len(leftovers), self.dlq,
            )  # fmt: skip

    # -- producing ----------------------------------------------------------------------

    async def submit(self, item: T) -> None:
        """Queue ``item``. Under ``overflow="block"`` waits while the queue is full; if
        cancelled while waiting, the item is spooled rather than lost."""
        try:
            spill = await self._queue.put(item)
        except asyncio.CancelledError:
            self.spool_unsubmitted([item], "cancelled while waiting for room")
            raise
        if spill:
            await self._spill_items([item])

    async def submit_many(self, items: Iterable[T]) -> None:
        """Queue several items at once (cheaper than one ``submit`` each). Under ``error``
        either all fit or none is queued. If cancelled while waiting for room, the items not
        queued yet are spooled rather than lost."""
        batch = items if isinstance(items, list) else list(items)
        before = self._queue.submitted
        try:
            rest = await self._queue.put_many(batch)
        except asyncio.CancelledError:
            taken = self._queue.submitted - before
            self.spool_unsubmitted(batch[taken:], "cancelled while waiting for room")
            raise
        if rest:
            await self._spill_items(rest)

    def spool_unsubmitted(self, items: list[T], reason: str) -> None:
        """Count ``items`` as submitted and dead-letter them at once, synchronously (a
        shutdown that cannot wait for room: what a producer still holds must not be
        lost). If the spool fails they are kept as unpersisted."""
        if not items:
            return
        self._queue.submitted += len(items)
        self._spool_now(items, ErrorInfo(type="Shutdown", sqlstate=None, message=reason))

    # -- workers ------------------------------------------------------------------------

    def _spawn(self, wid: int, delay: float) -> None:
        task = asyncio.create_task(self._worker(wid, delay), name=f"{self.name}-worker-{wid}")
        self._tasks[wid] = task
        task.add_done_callback(lambda t: self._on_worker_done(wid, t))

    async def _worker(self, wid: int, delay: float) -> None:
        if delay > 0:
            await self._sleep(delay)
        while True:
            items = await self._queue.take_batch()
            if items is None:
                return
            job = self._jobs[wid] = Bisection(items)
            await job.run(self._write, self._settle)
            del self._jobs[wid]
            self._consecutive_crashes = 0

    def _on_worker_done(self, wid: int, task: asyncio.Task[None]) -> None:
        """Supervisor: restart a worker that crashed; put its unfinished batch back."""
        if task.cancelled() or task.exception() is None:
            return
        cause = task.exception()
        assert cause is not None
        self._restarts += 1
        self._consecutive_crashes += 1
        self._note_error(cause)
        job = self._jobs.pop(wid, None)
        if job is not None:
            self._queue.put_back(job.unresolved())
        if self._no_restart:
            return
        delay = self.retry_policy.cap(self._consecutive_crashes)
        logger.opt(exception=cause).error(
            "coordinator {} worker {} crashed ({}); restarting in {:.2f}s",
            self.name, wid, type(cause).__name__, delay,
        )  # fmt: skip
        self._spawn(wid, delay)

    async def _write(self, part: list[T]) -> Attempt:
        """Write ``part``, retrying transient errors with backoff behind the circuit breaker
        until the retry policy gives up (then the attempt is ``transient``)."""
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
                    error = last or breaker.last_error
                    return Attempt("transient", 0, error, attempt, first_failed)
                probing = breaker.state == "half_open"
            attempt += 1
            try:
                new_rows = await self.sink.write(part)
            except Exception as exc:
                failure: Exception = exc
            except BaseException:
                if probing:
                    breaker.release_probe()
                raise
            else:
                breaker.record_success()
                return Attempt("ok", new_rows, None, attempt, first_failed)
            first_failed = first_failed or datetime.now(UTC)
            self._note_error(failure)
            if policy.classification(failure) != "transient":
                breaker.record_success()  # the database answered, or it is not about it
                return Attempt("permanent", 0, failure, attempt, first_failed)
            breaker.record_failure(failure)
            last = failure
            if attempt >= policy.max_attempts:
                return Attempt("transient", 0, failure, attempt, first_failed)
            self._retries += 1
            delay = policy.backoff(attempt)
            logger.debug(
                "coordinator {}: {} on a batch of {} (attempt {}), retrying in {:.3f}s",
                self.name, type(failure).__name__, len(part), attempt, delay,
            )  # fmt: skip
            await self._sleep(delay)

    async def _settle(self, part: list[T], attempt: Attempt) -> Next:
        """A resolved part: committed, or dead-lettered durably (off the event loop). A
        failed spool raises: the worker restarts and the part goes back to the queue."""
        if attempt.outcome == "ok":
            self._record_commit(len(part), attempt.new_rows)
            return "continue"
        error = attempt.error
        assert error is not None
        cancelled = await self._spooler.put(part, error, attempt.attempts, attempt.first_failed)
        self._dead_lettered += len(part)
        self._check_idle()
        logger.warning(
            "coordinator {}: {} items dead-lettered after {} attempts: {}",
            self.name, len(part), attempt.attempts, error_info(error),
        )  # fmt: skip
        return "cancelled" if cancelled else "continue"

    # -- spooling -------------------------------------------------------------------------

    async def _spill_items(self, items: list[T]) -> None:
        """``submit`` while spilling: count ``items`` and spool them at once (off the loop);
        if the spool fails they are kept as unpersisted."""
        self._queue.submitted += len(items)
        error = ErrorInfo(type="DrainTimeout", sqlstate=None, message="spilled while draining")
        try:
            cancelled = await self._spooler.put(items, error, 0)
        except Exception as exc:
            self._spooler.keep(items, exc)
            return
        self._dead_lettered += len(items)
        self._check_idle()
        if cancelled:
            raise asyncio.CancelledError

    def _spool_now(self, items: list[T], error: ErrorInfo) -> bool:
        """Dead-letter ``items`` synchronously; False if the spool failed (kept)."""
        if not self._spooler.put_now(items, error, 0):
            return False
        self._dead_lettered += len(items)
        self._check_idle()
        return True

    # -- accounting ---------------------------------------------------------------------

    def _record_commit(self, n: int, new_rows: int) -> None:
        self._committed += n
        self._new_rows += new_rows
        self._rate.note(self._committed)
        self._check_idle()

    def _pending(self) -> int:
        q = self._queue
        return q.submitted - self._committed - self._dead_lettered - q.dropped

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

    def stats(self) -> CoordinatorStats:
        """A snapshot of the state, counters and recent throughput."""
        q = self._queue
        return CoordinatorStats(
            name=self.name,
            state=self._state,
            queue_depth=len(q),
            capacity=self.settings.capacity,
            in_flight=sum(len(part) for job in self._jobs.values() for part in job.pending),
            submitted=q.submitted,
            committed=self._committed,
            new_rows=self._new_rows,
            duplicates_ignored=self._committed - self._new_rows,
            dead_lettered=self._dead_lettered,
            dropped=q.dropped,
            unpersisted=len(self._spooler.unpersisted),
            retries=self._retries,
            circuit=self._breaker.state,
            circuit_opened=self._breaker.times_opened,
            workers=self.settings.workers,
            workers_alive=sum(1 for t in self._tasks.values() if not t.done()),
            worker_restarts=self._restarts,
            blocked_producers=q.blocked,
            throughput=self._rate.rate(self._committed),
            high_watermark=q.high,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            write_paths=write_path_counts(self.sink),
        )

    def __repr__(self) -> str:
        h = self.stats()
        return (
            f"WriteCoordinator({self.name!r}, state={h.state}, depth={h.queue_depth}, "
            f"in_flight={h.in_flight}, committed={h.committed}, "
            f"dead_lettered={h.dead_lettered}, dropped={h.dropped}, circuit={h.circuit})"
        )
