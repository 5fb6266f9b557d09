"""The streams as Dagster runs: the stream job and its op, and the supervisor sensor.

One run per stream of ``streams.yaml`` (path: ``$MDP_STREAMS_FILE``, else ``./streams.yaml``),
tagged ``mdp/stream=<name>``; the instance settings (``deploy/dagster/dagster.yaml``) allow
one in-progress run per value of that tag.

The op runs the stream's ``Pipeline`` on an event loop in a thread of its own, while the
op's (main) thread waits, forwards mdp's log records to the run log and reports progress.
Terminating the run (UI, GraphQL, SIGINT/SIGTERM of the run worker) raises Dagster's
``DagsterExecutionInterruptedError`` in the main thread; the op then asks the pipeline to
stop, waits for it to drain (bounded) and re-raises, so the run ends CANCELED with every
record committed, dead-lettered or counted as dropped. (``asyncio.run`` in the main thread
would instead cancel every task at the interrupt, the coordinator's workers included.)
"""

# No "from __future__ import annotations": Dagster reads the op's annotations at runtime.

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mdp_core.dagster_names import KIND_TAG, STREAM_TAG, SUPERVISOR_SENSOR
from mdp_core.dlq import DeadLetterQueue
from mdp_core.errors import error_info
from mdp_core.pipeline import Pipeline, PipelineStats
from mdp_core.settings import get_settings
from mdp_core.store.database import Database, LockHeldError
from mdp_core.store.heartbeats import last_heartbeats
from mdp_core.streams import StreamsConfigError, StreamSpec, load_streams
from mdp_dagster.assets import RAW_ASSETS, raw_asset_for
from mdp_dagster.logging import LoguruBridge
from mdp_dagster.resources import DlqResource, StoreResource
from mdp_dagster.supervisor import (
    ACTIVE,
    Decision,
    RunView,
    SupervisorPolicy,
    decide,
)

__all__ = [
    "KIND_TAG",
    "STREAM_TAG",
    "PipelineThread",
    "StreamRunConfig",
    "defs",
    "find_stream",
    "load_stream_specs",
    "run_stream",
    "stream_job",
    "stream_run_request",
    "stream_supervisor",
    "streams_file",
]

# Extra time, on top of the coordinator's drain timeout and the provider's stop timeout,
# that the op waits for the pipeline thread after a termination request.
DRAIN_MARGIN = 30.0

ACTIVE_STATUSES = [dg.DagsterRunStatus(s) for s in sorted(ACTIVE)]


# -- streams.yaml ------------------------------------------------------------------------


def streams_file() -> Path:
    """``$MDP_STREAMS_FILE``, else ``streams.yaml`` in the current directory."""
    return get_settings().streams_file.expanduser().resolve()


def load_stream_specs(path: str | Path | None = None) -> list[StreamSpec]:
    """Every stream of the streams file; ``StreamsConfigError`` (naming the entry and the
    field) when it is malformed."""
    return load_streams(path if path is not None else streams_file())


def find_stream(name: str, path: str | Path | None = None) -> StreamSpec:
    """The stream called ``name``; ``StreamsConfigError`` if the file has none."""
    specs = load_stream_specs(path)
    for spec in specs:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in specs) or "none"
    raise StreamsConfigError(
        f"{path or streams_file()}: no stream named {name!r} (streams: {known})"
    )


# -- the stream op -------------------------------------------------------------------------


class StreamRunConfig(dg.Config):
    """Run config of ``stream_job`` (what the supervisor puts in each RunRequest)."""

    stream: str = Field(description="name of the stream in streams.yaml")
    max_seconds: float = Field(
        default=0.0,
        ge=0,
        description="stop (and drain) after this many seconds; 0: until terminated",
    )
    progress_interval: float = Field(
        default=30.0, gt=0, description="seconds between progress observations in the UI"
    )
    heartbeat_interval: float = Field(
        default=SupervisorPolicy().heartbeat.interval,
        gt=0,
        description="seconds between rows in mdp.stream_heartbeats; the supervisor judges "
        "staleness by its policy's interval, so a supervised run keeps the default",
    )


class PipelineThread:
    """A ``Pipeline`` running on its own event loop in a non-daemon thread.

    Waiting uses an Event, never ``Thread.join``: in Python 3.11 a signal handler raising
    inside ``join`` (Dagster's interrupt) marks the still-running thread as stopped.

    ``request_stop()`` is safe from any thread, before or after the pipeline started;
    ``snapshot()`` reads the counters on the loop's thread; ``outcome()`` after the thread
    ended gives the final stats and the error (provider failure, lock held, database ...).
    """

    def __init__(
        self,
        spec: StreamSpec,
        store: StoreResource,
        dlq: DeadLetterQueue,
        *,
        run_id: str,
        heartbeat_interval: float,
        max_seconds: float | None,
    ) -> None:
        self.spec = spec
        self._store = store
        self._dlq = dlq
        self._run_id = run_id
        self._heartbeat_interval = heartbeat_interval
        self._max_seconds = max_seconds
        self._lock = threading.Lock()
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipeline: Pipeline | None = None
        self._stats: PipelineStats | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"mdp-stream-{spec.name}")

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        """True from ``start()`` until the pipeline has finished (drained or failed)."""
        return self._thread.ident is not None and not self._done.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait (interruptibly) for the pipeline to finish; return whether it has."""
        if self._done.wait(timeout):
            self._thread.join(timeout=5.0)  # it is only returning now
            return True
        return False

    def request_stop(self) -> None:
        with self._lock:
            self._stop_requested = True
            loop, pipeline = self._loop, self._pipeline
        if loop is not None and pipeline is not None:
            try:
                loop.call_soon_threadsafe(pipeline.request_stop)
            except RuntimeError:
                pass  # the loop already closed: the pipeline has finished

    def drain_budget(self) -> float:
        """How long a stop may reasonably take: drain timeout + provider stop + margin."""
        drain = self.spec.coordinator.to_settings().drain_timeout
        return drain + get_settings().graceful_cancel_timeout + DRAIN_MARGIN

    # -- observing -------------------------------------------------------------------------

    def stats(self) -> PipelineStats | None:
        """The pipeline's counters now (``None`` before it exists or if the loop is busy)."""
        with self._lock:
            loop, pipeline = self._loop, self._pipeline
        if pipeline is None:
            return None
        if self._done.is_set() or loop is None:
            return pipeline.stats()

        async def read() -> PipelineStats:
            return pipeline.stats()

        try:
            return asyncio.run_coroutine_threadsafe(read(), loop).result(timeout=2.0)
        except Exception:
            return None  # the loop is closing or too busy to answer now

    def metrics_url(self) -> str | None:
        """Where the pipeline serves Prometheus metrics (``metrics_port`` in streams.yaml),
        once it does; ``None`` before, or when the stream has no metrics port."""
        with self._lock:
            pipeline = self._pipeline
        server = pipeline.metrics if pipeline is not None else None
        return server.url if server is not None else None

    def outcome(self) -> tuple[PipelineStats | None, BaseException | None]:
        """Final stats (or the last snapshot) and the error, once the thread has ended."""
        with self._lock:
            pipeline = self._pipeline
        stats = self._stats or (pipeline.stats() if pipeline is not None else None)
        return stats, self._error

    # -- the thread ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._stats = asyncio.run(self._run())
        except BaseException as exc:  # reported by the op from the main thread
            self._error = exc
        finally:
            self._done.set()

    async def _run(self) -> PipelineStats:
        async with Database.connect(self._store.dsn()) as db:
            pipeline = Pipeline(
                self.spec,
                db,
                dlq=self._dlq,
                run_id=self._run_id,
                single_writer=True,
                heartbeat_interval=self._heartbeat_interval,
            )
            with self._lock:
                self._loop, self._pipeline = asyncio.get_running_loop(), pipeline
                stop_now = self._stop_requested
            if stop_now:
                pipeline.request_stop()
            return await pipeline.run(max_seconds=self._max_seconds)


def _progress_metadata(
    spec: StreamSpec, stats: PipelineStats, dlq_depth: int | None
) -> dict[str, Any]:
    """Run counters for the UI (no DSN, no secrets)."""
    c = stats.to_dict()
    metadata: dict[str, Any] = {
        "stream": spec.name,
        "provider": spec.provider,
        "symbols": ", ".join(spec.symbols),
        "state": c["state"],
        "received": dg.MetadataValue.int(c["received"]),
        "committed": dg.MetadataValue.int(c["committed"]),
        "new_rows": dg.MetadataValue.int(c["new_rows"]),
        "dead_lettered": dg.MetadataValue.int(c["dead_lettered"]),
        "dropped": dg.MetadataValue.int(c["dropped_total"]),
        "dropped_by_policy": dg.MetadataValue.json(c["dropped"]),
        "pending": dg.MetadataValue.int(c["pending"]),
        "balanced": dg.MetadataValue.bool(bool(c["balanced"])),
        "rate_per_s": dg.MetadataValue.float(float(c["rate"])),
        "queue_depth": dg.MetadataValue.int(c["queue_depth"]),
        "channel_depth": dg.MetadataValue.int(c["channel_depth"]),
        "retries": dg.MetadataValue.int(c["retries"]),
        "write_paths": dg.MetadataValue.json(c["write_paths"]),
        "circuit": str(c["circuit"]),
        "elapsed_s": dg.MetadataValue.float(float(c["elapsed_s"])),
        "dagster/last_updated_timestamp": dg.MetadataValue.timestamp(time.time()),
    }
    if dlq_depth is not None:
        metadata["dlq_depth"] = dg.MetadataValue.int(dlq_depth)
    if c["error"]:
        metadata["error"] = str(c["error"])
    return metadata


def _dlq_depth(dlq: DeadLetterQueue) -> int | None:
    try:
        return dlq.count()
    except Exception:
        return None


@dg.op(
    description="Run one stream of streams.yaml into PostgreSQL until the run is terminated "
    "(or max_seconds pass), then drain; reports progress as observations of its table.",
)
def run_stream(
    context: dg.OpExecutionContext,
    config: StreamRunConfig,
    store: StoreResource,
    dlq: DlqResource,
) -> None:
    try:
        spec = find_stream(config.stream)
    except StreamsConfigError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    asset_key = raw_asset_for(spec.mode, spec.resolution, spec.sessions)
    # the run's own mdp tags (stream, kind) on each observation: filterable per stream
    event_tags = {k: v for k, v in context.run.tags.items() if k in (STREAM_TAG, KIND_TAG)}
    queue = dlq.queue()
    runner = PipelineThread(
        spec,
        store,
        queue,
        run_id=context.run_id,
        heartbeat_interval=config.heartbeat_interval,
        max_seconds=config.max_seconds or None,
    )

    announced: list[str] = []

    def report(stats: PipelineStats | None) -> None:
        url = runner.metrics_url()
        if url is not None and not announced:
            announced.append(url)
            context.log.info(f"stream {spec.name}: Prometheus metrics on {url}")
        if stats is not None and stats.state != "new":
            metadata = _progress_metadata(spec, stats, _dlq_depth(queue))
            if announced:
                metadata["metrics_url"] = dg.MetadataValue.url(announced[0])
            context.log_event(
                dg.AssetObservation(asset_key=asset_key, metadata=metadata, tags=event_tags)
            )

    level = get_settings().log_level
    poll = min(1.0, config.progress_interval)
    with LoguruBridge(context.log, level="INFO" if level == "TRACE" else level) as bridge:
        context.log.info(f"starting stream {spec.name}: {spec.mode} of {', '.join(spec.symbols)}")
        runner.start()
        next_report = time.monotonic() + config.progress_interval
        try:
            while runner.is_alive():
                runner.join(timeout=poll)
                bridge.drain()
                if not announced and runner.metrics_url() is not None:
                    report(None)  # say where the metrics are as soon as they are served
                if time.monotonic() >= next_report and runner.is_alive():
                    report(runner.stats())
                    next_report = time.monotonic() + config.progress_interval
        except dg.DagsterExecutionInterruptedError:
            _stop_and_drain(runner, bridge, context)
            try:
                report(runner.outcome()[0])
                bridge.drain()
            except dg.DagsterExecutionInterruptedError:
                pass  # a repeated interrupt: the heartbeat row has the final counters too
            raise
        except BaseException:  # an unexpected error in this thread: stop, do not orphan
            if runner.is_alive():
                _stop_and_drain(runner, bridge, context)
            raise
        stats, error = runner.outcome()
        report(stats)
    counters = stats.to_dict() if stats is not None else {}
    if error is not None:
        raise _failure(spec, error, counters)
    if stats is not None and not stats.balanced:
        raise dg.Failure(
            description=f"stream {spec.name}: accounting does not balance after the drain",
            metadata=counters,
        )
    context.log.info(f"stream {spec.name} finished: {counters}")


def _stop_and_drain(runner: PipelineThread, bridge: LoguruBridge, context: Any) -> None:
    """Stop the pipeline and wait (bounded) for its drain, absorbing repeated interrupts."""
    runner.request_stop()  # first: nothing may delay it
    deadline = time.monotonic() + runner.drain_budget()
    try:
        context.log.info(f"stream {runner.spec.name}: termination requested, draining")
    except dg.DagsterExecutionInterruptedError:
        pass
    while runner.is_alive() and time.monotonic() < deadline:
        try:
            runner.join(timeout=1.0)
            bridge.drain()
        except dg.DagsterExecutionInterruptedError:
            continue  # Dagster repeats the interrupt while the run is CANCELING: keep draining
    if runner.is_alive():
        context.log.error(
            f"stream {runner.spec.name}: still draining after {runner.drain_budget():.0f}s; "
            "leaving the run (what is not committed is spooled to the DLQ by the coordinator)"
        )


def _failure(spec: StreamSpec, error: BaseException, counters: dict[str, Any]) -> dg.Failure:
    metadata = {k: v for k, v in counters.items() if v is not None}
    if isinstance(error, LockHeldError):
        return dg.Failure(
            description=f"stream {spec.name} already has a writer: {error}",
            metadata=metadata,
            allow_retries=False,
        )
    return dg.Failure(
        description=f"stream {spec.name} failed: {error_info(error)}",  # password masked
        metadata=metadata,
    )


@dg.job(
    executor_def=dg.in_process_executor,
    tags={KIND_TAG: "stream", "dagster/max_retries": "0"},
    description="One long-running stream (see streams.yaml); launched by stream_supervisor.",
)
def stream_job() -> None:
    run_stream()


# -- the supervisor ------------------------------------------------------------------------


def stream_run_request(spec: StreamSpec, reason: str) -> dg.RunRequest:
    """A run of ``stream_job`` for ``spec``: never a run key (a stable key would block every
    relaunch), the stream tag that the instance's concurrency limit applies to."""
    return dg.RunRequest(
        run_key=None,
        run_config=dg.RunConfig(ops={"run_stream": StreamRunConfig(stream=spec.name)}),
        tags={STREAM_TAG: spec.name, KIND_TAG: "stream", "mdp/reason": reason[:200]},
    )


def _view(record: Any) -> RunView:
    run = record.dagster_run
    return RunView(
        run_id=run.run_id,
        status=run.status.value,
        created=record.create_timestamp.timestamp(),
        started=record.start_time,
        ended=record.end_time,
    )


def _terminate(
    instance: dg.DagsterInstance, run_id: str, reason: str, *, fail: bool, timeout: float = 10.0
) -> None:
    """Ask the run launcher to terminate ``run_id`` (waiting at most ``timeout`` s: a wedged
    worker can block the launcher's call, and the sensor tick must stay short); with
    ``fail``, mark the run failed if it is still not finished (its worker is presumed dead)."""

    def ask() -> None:
        try:
            instance.run_launcher.terminate(run_id)
        except Exception:
            pass  # the worker or its code server is gone; marking it failed is what counts

    asker = threading.Thread(target=ask, name=f"terminate-{run_id[:8]}", daemon=True)
    asker.start()
    asker.join(timeout)
    if fail:
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, reason)


def _launched_from(record: Any, location: str | None) -> bool:
    """Whether the run was launched from code location ``location`` (any, when ``None``)."""
    origin = record.dagster_run.remote_job_origin
    return location is None or origin is None or origin.location_name == location


def supervise(
    instance: dg.DagsterInstance,
    specs: list[StreamSpec],
    store: StoreResource,
    log: Any,
    *,
    now: float | None = None,
    policy: SupervisorPolicy | None = None,
    location: str | None = None,
) -> tuple[list[dg.RunRequest], list[Decision]]:
    """One supervisor pass: terminate stale runs and runs of streams no longer enabled,
    and return the run requests for streams that need a run (and every decision).

    With ``location`` only the runs launched from that code location are looked at: each
    stream shard's code location supervises its own streams and leaves the others' alone."""
    policy = policy or SupervisorPolicy()
    now = time.time() if now is None else now
    enabled = {s.name: s for s in specs if s.enabled}
    active = [
        record
        for record in instance.get_run_records(
            filters=dg.RunsFilter(job_name=stream_job.name, statuses=ACTIVE_STATUSES)
        )
        if _launched_from(record, location)
    ]
    by_stream: dict[str, list[RunView]] = {}
    for record in active:
        name = record.dagster_run.tags.get(STREAM_TAG)
        if name not in enabled:
            log.info(f"terminating run {record.dagster_run.run_id}: stream {name!r} not enabled")
            _terminate(instance, record.dagster_run.run_id, "stream not enabled", fail=False)
            continue
        by_stream.setdefault(name, []).append(_view(record))
    started = [v.run_id for views in by_stream.values() for v in views if v.status == "STARTED"]
    heartbeats: dict[str, float] | None = {}
    if started:
        try:
            heartbeats = store.run(lambda db: last_heartbeats(db, started))
        except Exception as exc:
            log.warning(f"cannot read heartbeats, not judging staleness this time: {exc}")
            heartbeats = None
    requests: list[dg.RunRequest] = []
    decisions: list[Decision] = []
    for name, spec in enabled.items():
        runs = by_stream.get(name)
        if not runs:  # no active run: the history decides (backoff after failures)
            records = instance.get_run_records(
                filters=dg.RunsFilter(job_name=stream_job.name, tags={STREAM_TAG: name}),
                limit=policy.history,
            )
            runs = [_view(r) for r in records if _launched_from(r, location)]
        decision = decide(name, runs, heartbeats, now, policy)
        decisions.append(decision)
        for run_id in decision.terminate:
            log.warning(f"stream {name}: {decision.reason}")
            _terminate(instance, run_id, f"supervisor: {decision.reason}", fail=True)
        if decision.launch:
            log.info(f"stream {name}: launching a run ({decision.reason})")
            requests.append(stream_run_request(spec, decision.reason))
    return requests, decisions


@dg.sensor(
    name=SUPERVISOR_SENSOR,
    job=stream_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps one run per enabled stream of streams.yaml alive: launches missing "
    "ones, relaunches failed ones with backoff, replaces runs with a stale heartbeat.",
)
def stream_supervisor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
    specs = load_stream_specs()  # a malformed file fails the tick with the entry and field
    origin = context.code_location_origin  # None when evaluated in-process (tests)
    location = origin.location_name if origin is not None else None
    requests, decisions = supervise(context.instance, specs, store, context.log, location=location)
    if requests:
        return dg.SensorResult(run_requests=requests)
    summary = "; ".join(f"{d.stream}: {d.reason}" for d in decisions) or "no enabled streams"
    return dg.SensorResult(skip_reason=summary)


defs = dg.Definitions(assets=RAW_ASSETS, jobs=[stream_job], sensors=[stream_supervisor])
