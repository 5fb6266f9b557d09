"""One supervised stream: provider -> Channel -> operators -> WriteCoordinator -> PostgreSQL.

A ``StreamSpec`` (``mdp_core.streams``) says what to stream; a ``Pipeline`` runs one until
it is asked to stop, ``max_seconds`` pass or
the provider ends, and then drains: every record received at the provider's edge ends
committed, dead-lettered or in a named drop counter (``PipelineStats.balanced``).

Used by ``mdp stream``, the examples, the Dagster stream op and the soak test, so all of them
stop, drain and account in exactly the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import operator
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import asyncpg

from mdp_core.accounting import PipelineState, PipelineStats
from mdp_core.calendars import sessions_of
from mdp_core.channel import Channel, ChannelStats
from mdp_core.coordinator import RetryPolicy, WriteCoordinator
from mdp_core.dlq import DeadLetterQueue
from mdp_core.errors import error_info
from mdp_core.logs import logger
from mdp_core.metrics import CommitLatency, LatencySink, MetricsServer, StreamMetrics
from mdp_core.models import Record, resolution_timedelta
from mdp_core.operators import OperatorStats, deduplicate, throttle
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.runtime import RuntimeOrchestrator
from mdp_core.sink import Sink
from mdp_core.store.database import Database, DatabaseError, LockHeldError
from mdp_core.store.heartbeats import HeartbeatPolicy, write_heartbeat
from mdp_core.streams import StreamSpec

__all__ = ["STREAM_RETRY_POLICY", "Pipeline", "PipelineState", "PipelineStats"]


ProgressCallback = Callable[[PipelineStats], Awaitable[None] | None]

#: Streams retry a failing batch for about 20 s (delay caps 0.1, 0.2, ... 5 s) before
#: spooling it, so a routine database restart is ridden out without touching the DLQ.
STREAM_RETRY_POLICY = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=5.0)
_LOCK_FAILURES = 5  # unexpected failures in a row re-acquiring the lock before a stream stops
_FAR_AHEAD = 1e9  # seconds: see Pipeline._throttle_clock


class Pipeline:
    """Run one ``StreamSpec`` into PostgreSQL until stopped, then drain.

    Guarantees:
    - one writer per stream: the run holds the PostgreSQL advisory lock
      ``mdp:stream:<name>`` (``single_writer=True``), else it fails at once with
      ``LockHeldError``. If the lock's connection is lost (the database restarted), the
      stream keeps going and re-acquires the lock with backoff; if another writer got it
      meanwhile, the stream stops, drains and fails with ``LockHeldError``; if re-acquiring
      keeps failing for another reason than the database being unreachable, it stops and
      fails with that error. The watcher never dies silently;
    - stopping (``request_stop()``, ``max_seconds`` or the provider ending) stops the
      provider first, then drains everything buffered (the channel, the operators, the
      coordinator; a throttle stops delaying) into the database, or, once the coordinator's
      ``drain_timeout`` is spent, into the dead-letter spool: every record received at the
      provider's edge ends committed, dead-lettered (durably) or counted as dropped by a
      named policy, and no task ends holding a record. Cancelling ``run()`` is a stop
      request too: it drains the same way, then raises ``CancelledError``. If the spool
      itself fails, ``run()`` raises ``SpoolError`` and the stats are not balanced;
    - a provider failure is raised from ``run()`` after the drain, never swallowed;
    - an IBKR bars stream resumes where the table ends: the bars missed while no stream
      ran (a restart, a relaunched run) are backfilled from IB's history (up to the
      source's ``max_backfill_seconds``); a coarser bar stored ``partial`` by the last stop
      is rebuilt from its window's 5-second bars and replaced;
    - a heartbeat row (``mdp.stream_heartbeats``) every ``heartbeat_interval`` seconds and
      ``on_progress(stats)`` every ``progress_interval`` seconds; a failing heartbeat (the
      database may be down) is logged, never fatal.
    """

    def __init__(
        self,
        spec: StreamSpec,
        db: Database,
        *,
        registry: ProviderRegistry | None = None,
        dlq: DeadLetterQueue | None = None,
        retry_policy: RetryPolicy | None = None,
        run_id: str | None = None,
        single_writer: bool = True,
        heartbeat_interval: float = HeartbeatPolicy().interval,
        on_progress: ProgressCallback | None = None,
        progress_interval: float = 30.0,
        lock_check_interval: float = 2.0,
    ) -> None:
        self.spec = spec
        self.db = db
        self.registry = registry or ProviderRegistry()
        self.dlq = dlq if dlq is not None else DeadLetterQueue()
        self.retry_policy = retry_policy or STREAM_RETRY_POLICY
        self.run_id = run_id or uuid.uuid4().hex
        self.single_writer = single_writer
        self.heartbeat_interval = heartbeat_interval
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.lock_check_interval = lock_check_interval
        self._latency = CommitLatency() if spec.metrics_port is not None else None
        self._lock_key = f"mdp:stream:{spec.name}"
        self._locks: list[AbstractAsyncContextManager[asyncpg.Connection]] = []
        # A writer refused by the lock writes no heartbeat: the stream's rows belong to the
        # run that holds it, and a "failed" row of ours would read as that stream failing.
        self._wrote_as_owner = not single_writer
        self._lock_conn: asyncpg.Connection | None = None
        self._stop = asyncio.Event()
        self._state: PipelineState = "new"
        self._started: float | None = None
        self._started_at: datetime | None = None
        self._error: BaseException | None = None
        self._runtime: RuntimeOrchestrator | None = None
        self._channel: Channel[Record] | None = None
        self._coordinator = self._new_coordinator()  # started by run()
        self._throttle_stats = OperatorStats()
        self._dedupe_stats = OperatorStats()
        self._draining = asyncio.Event()  # set when the drain starts: throttles stop delaying
        self._final: PipelineStats | None = None
        self.metrics: MetricsServer | None = None  # serving while run() runs (metrics_port)

    def request_stop(self) -> None:
        """Ask the pipeline to stop and drain (idempotent; call from the loop's thread)."""
        self._stop.set()

    async def run(self, *, max_seconds: float | None = None) -> PipelineStats:
        """Stream until stopped / ``max_seconds`` / the provider ends; drain; return the stats."""
        if self._state != "new":
            raise RuntimeError("a Pipeline runs once: create a new one")
        spec = self.spec
        self._state = "running"
        self._started, self._started_at = time.monotonic(), datetime.now(UTC)
        background: list[asyncio.Task[None]] = []
        cancelled = False  # run() was cancelled while streaming: drained, then re-raised
        try:
            await self._serve_metrics()
            if self.single_writer:
                await self._acquire_lock()
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(self._coordinator)
                self._runtime = runtime = RuntimeOrchestrator(registry=self.registry)
                stack.push_async_callback(runtime.stop)
                self._channel = await self._open_channel(runtime)
                logger.info(
                    "stream {} running (run {}): {} {} of {} via {}",
                    spec.name, self.run_id, spec.resolution if spec.mode == "bars" else "",
                    spec.mode, ",".join(spec.symbols), spec.provider,
                )  # fmt: skip
                background = [
                    asyncio.create_task(self._every(self.heartbeat_interval, self._heartbeat)),
                    asyncio.create_task(self._every(self.progress_interval, self._progress)),
                ]
                if self.single_writer:
                    background.append(asyncio.create_task(self._watch_lock()))
                consume = asyncio.create_task(self._consume(self._channel, self._coordinator))
                stop = asyncio.create_task(self._stop.wait())
                try:
                    try:
                        await asyncio.wait(
                            {consume, stop},
                            timeout=max_seconds,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    except asyncio.CancelledError:
                        cancelled = True  # a stop request: drain, then re-raise below
                    self._state = "draining"
                    await self._drain(runtime, consume)
                finally:  # no task outlives run(), whatever interrupted it
                    for task in (stop, consume):
                        task.cancel()
                    await asyncio.gather(stop, consume, return_exceptions=True)
                    if consume.cancelled():  # interrupted mid-drain: spool what is left
                        await runtime.stop()
                        self._coordinator.spool_unsubmitted(
                            self._channel.drain_nowait(), "run interrupted while draining"
                        )
                # leaving the stack drains the coordinator
            if cancelled:
                raise asyncio.CancelledError
        except BaseException as exc:
            self._error = self._error or exc
            raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._release_locks()
            self._state = "failed" if self._error is not None else "finished"
            self._final = self.stats()
            if self._wrote_as_owner:
                await self._heartbeat()
            await self._progress()
            self._log_summary(self._final)
            if self.metrics is not None:
                await self.metrics.close()
        if self._error is not None:
            raise self._error
        return self._final

    async def _drain(self, runtime: RuntimeOrchestrator, consume: asyncio.Task[None]) -> None:
        """Stop the provider, then move everything buffered on: to the database within the
        coordinator's ``drain_timeout``, to the spool after it. ``consume`` always runs to
        its end (it is never cancelled holding a record)."""
        budget = self._coordinator.settings.drain_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        self._draining.set()
        if not consume.done():
            logger.info("stream {}: stopping provider, draining", self.spec.name)
            await runtime.stop()  # closes the channel; consume delivers the rest
        _, pending = await asyncio.wait({consume}, timeout=max(0.0, deadline - loop.time()))
        if pending:
            logger.warning(
                "stream {}: drain budget of {}s spent: what is still buffered goes to the "
                "dead-letter spool",
                self.spec.name,
                budget,
            )
            await self._coordinator.spill(f"drain budget of {budget}s spent")
        try:
            await consume
        except Exception as exc:  # the provider's failure, raised after the drain
            self._error = exc

    # -- the single-writer lock --------------------------------------------------------------

    async def _acquire_lock(self) -> None:
        lock = self.db.advisory_lock(self._lock_key)
        self._lock_conn = await lock.__aenter__()
        self._locks.append(lock)
        self._wrote_as_owner = True

    @property
    def holds_lock(self) -> bool:
        """Whether the single-writer lock is currently held (its connection is alive)."""
        return self._lock_conn is not None and not self._lock_conn.is_closed()

    async def check_lock(self) -> None:
        """Re-acquire the lock if its connection died; stop the stream if another writer
        holds it. Raises what re-acquiring raised otherwise (``_watch_lock`` retries)."""
        if self._lock_conn is None or not self._lock_conn.is_closed():
            return
        logger.warning("stream {}: single-writer lock lost with its connection", self.spec.name)
        try:  # (the dead connection stays in _lock_conn until this succeeds: checked again)
            await self._acquire_lock()
        except LockHeldError as exc:
            logger.error("stream {}: another writer holds the lock; stopping", self.spec.name)
            self._error = exc
            self.request_stop()
            raise
        logger.info("stream {}: single-writer lock re-acquired", self.spec.name)

    async def _watch_lock(self) -> None:
        """Run ``check_lock`` every ``lock_check_interval`` seconds until the run ends.

        An unreachable database is retried with backoff for as long as it takes (nobody
        else can take the lock meanwhile); any other failure is retried too, and after
        ``_LOCK_FAILURES`` in a row the stream stops with that error. Never dies silently."""
        backoff = RetryPolicy(
            initial_backoff=self.lock_check_interval, max_backoff=30.0, jitter="equal"
        )
        failures = 0
        delay = self.lock_check_interval
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self.check_lock()
                except LockHeldError:
                    return
                except Exception as exc:
                    unreachable = isinstance(exc, DatabaseError | OSError | TimeoutError)
                    failures = 0 if unreachable else failures + 1
                    logger.warning(
                        "stream {}: single-writer lock not re-acquired yet: {}",
                        self.spec.name,
                        error_info(exc),
                    )
                    if failures >= _LOCK_FAILURES:
                        logger.error("stream {}: cannot hold the lock; stopping", self.spec.name)
                        self._error = self._error or exc
                        self.request_stop()
                        return
                    delay = backoff.backoff(max(1, failures))
                else:
                    failures, delay = 0, self.lock_check_interval
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must not leave the stream unguarded
            logger.opt(exception=exc).error("stream {}: lock watcher failed", self.spec.name)
            self._error = self._error or exc
            self.request_stop()

    async def _release_locks(self) -> None:
        while self._locks:
            lock = self._locks.pop()
            try:
                await lock.__aexit__(None, None, None)
            except Exception as exc:  # a dead connection: the lock is gone anyway
                logger.debug("stream {}: releasing lock: {}", self.spec.name, exc)

    def _new_coordinator(self) -> WriteCoordinator[Record]:
        from mdp_core.store.sinks import BarsSink, QuotesSink

        sink: Sink[Any] = BarsSink(self.db) if self.spec.mode == "bars" else QuotesSink(self.db)
        if self._latency is not None:
            sink = LatencySink(sink, self._latency)
        return WriteCoordinator(
            sink,
            self.spec.coordinator.to_settings(),
            self.retry_policy,
            self.dlq,
            name=self.spec.name,
        )

    async def _open_channel(self, runtime: RuntimeOrchestrator) -> Channel[Record]:
        spec = self.spec
        common: dict[str, Any] = {
            "max_buffer": spec.channel_capacity,
            "provider": spec.provider,
            "overflow": spec.channel_overflow,
            **spec.provider_kwargs(),
        }
        if spec.mode == "bars":
            if spec.provider == "ibkr":
                # Resume where the table ends: bars missed while no stream ran are backfilled
                # (for coarser bars, from the end of the last complete one, so a bar stored
                # partial when the last run stopped is rebuilt whole and replaces it).
                last = await self.db.last_bar_times(spec.symbols, spec.resolution)
                common.setdefault("resume_after", resume_points(spec, last, datetime.now(UTC)))
            bars = await runtime.bars_to_channel(
                spec.symbols, resolution=spec.resolution, sessions=spec.sessions, **common
            )
            return bars  # type: ignore[return-value]
        quotes = await runtime.quotes_to_channel(spec.symbols, **common)
        return quotes  # type: ignore[return-value]

    async def _consume(self, channel: Channel[Record], coord: WriteCoordinator[Record]) -> None:
        spec = self.spec
        if spec.throttle is None and spec.dedupe_ttl is None:
            # No operators: move whole batches (the fast path).
            async for batch in channel.iter_batches(coord.settings.batch_size):
                await coord.submit_many(batch)
            return
        stream: AsyncIterator[Record] = channel.iter()
        if spec.throttle is not None:
            stream = throttle(
                stream, spec.throttle, mode="delay", stats=self._throttle_stats,
                clock=self._throttle_clock, sleep=self._throttle_sleep,
            )  # fmt: skip
        if spec.dedupe_ttl is not None:
            stream = deduplicate(
                stream, operator.attrgetter("key"), spec.dedupe_ttl, stats=self._dedupe_stats
            )
        async for record in stream:
            await coord.submit(record)

    def _throttle_clock(self) -> float:
        # Draining lifts the rate limit: time jumps ahead, so the bucket is full again.
        return time.monotonic() + (_FAR_AHEAD if self._draining.is_set() else 0.0)

    async def _throttle_sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._draining.wait(), seconds)
        except TimeoutError:
            pass

    # -- observing -------------------------------------------------------------------------

    async def _serve_metrics(self) -> None:
        """Serve Prometheus metrics when the spec asks for them (closed at the end of run)."""
        spec = self.spec
        if spec.metrics_port is None or self._latency is None:
            return
        metrics = StreamMetrics(self, self._latency, self.dlq)
        server = MetricsServer(metrics.render, spec.metrics_host, spec.metrics_port)
        await server.start()
        self.metrics = server

    def provider_counters(self) -> dict[str, int]:
        """The providers' own integer counters (IBKR: reconnects, resubscribes, ...), summed."""
        totals: Counter[str] = Counter()
        for provider in self._runtime.providers() if self._runtime is not None else []:
            counters = getattr(provider, "stats", None)
            values = counters() if callable(counters) else None
            if isinstance(values, dict):
                totals.update(
                    {k: v for k, v in values.items() if type(v) is int and isinstance(k, str)}
                )
        return dict(totals)

    def stats(self) -> PipelineStats:
        """The current counters (safe to call at any time after ``run`` started)."""
        if self._final is not None:
            return self._final
        received = 0
        dropped: Counter[str] = Counter()
        if self._runtime is not None:
            for s in self._runtime.stats().values():
                received += s.received
                dropped.update(s.dropped)
        channel = self._channel.stats() if self._channel is not None else _NO_CHANNEL
        if self._channel is not None:
            policy = self._channel.overflow
            dropped[policy] += channel.dropped + channel.conflated
            dropped["rejected"] += channel.rejected
        dropped["throttle"] += self._throttle_stats.dropped
        dropped["dedupe"] += self._dedupe_stats.duplicates
        health = self._coordinator.stats()
        dropped["queue_drop_oldest"] += health.dropped
        return PipelineStats(
            stream=self.spec.name,
            run_id=self.run_id,
            state=self._state,
            started_at=self._started_at,
            elapsed=time.monotonic() - self._started if self._started is not None else 0.0,
            received=received,
            dropped={k: v for k, v in dropped.items() if v},
            channel=channel,
            coordinator=health,
            rate=health.throughput,
            error=None if self._error is None else str(error_info(self._error)),
        )

    async def _every(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            await action()

    async def _heartbeat(self) -> None:
        try:
            counters = self.stats().to_dict()
            await asyncio.wait_for(
                write_heartbeat(self.db, self.spec.name, self.run_id, counters), timeout=5
            )
        except Exception as exc:
            logger.warning("stream {}: heartbeat not written: {}", self.spec.name, exc)

    async def _progress(self) -> None:
        if self.on_progress is None:
            return
        try:
            result = self.on_progress(self.stats())
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            logger.warning("stream {}: progress callback failed: {}", self.spec.name, exc)

    def _log_summary(self, stats: PipelineStats) -> None:
        log = logger.info if stats.balanced else logger.error
        log("stream {} {} after {:.1f}s: {}", stats.stream, stats.state, stats.elapsed,
            stats.summary())  # fmt: skip


def resume_points(
    spec: StreamSpec, last: dict[str, datetime], now: datetime
) -> dict[str, datetime]:
    """Per symbol, the start of the last 5-second bar a resumed IBKR stream skips, from
    ``last`` (the start of each symbol's newest complete stored bar): the end of that bar
    less 5 s, so every later window is rebuilt whole.

    For session bars: 5 s before the open of the first session after that bar, or, for a
    symbol without one, of the session in progress at ``now``; none if that session has
    not opened by ``now`` (the bars until then are outside every session). So a session cut
    by a stop, or started mid-way, is built from its open."""
    five = resolution_timedelta("5s")
    if spec.sessions is None:
        width = resolution_timedelta(spec.resolution) - five
        return {symbol: t + width for symbol, t in last.items()}
    sessions = sessions_of(spec.sessions)
    current = sessions.of(now.timestamp())
    points: dict[str, datetime] = {}
    for symbol in spec.symbols:
        t = last.get(symbol)
        if t is not None:
            opens = sessions.open_after(t.timestamp())
        elif current is not None:
            opens = current[0]
        else:
            continue
        if opens <= now.timestamp():
            points[symbol] = datetime.fromtimestamp(opens, UTC) - five
    return points


_NO_CHANNEL = ChannelStats(
    capacity=0, depth=0, high_water=0, accepted=0, delivered=0, dropped=0, conflated=0,
    rejected=0, closed=False,
)  # fmt: skip
