"""The soak's streams: in-process ``Pipeline`` runs and ``mdp stream`` subprocesses.

- ``InProcessStream`` runs a ``Pipeline`` whose provider is the real ``IBKRStreamSource``
  wrapped by ``TappedSource``: the wrapper puts a ``TapEdge`` between the source and the
  stream's edge, which records the key of every record the source delivered (so the end
  check can compare them with the table one by one) and, when asked, pushes poison records
  (rows that break the schema's CHECKs) after a real one.
- ``CliStream`` runs ``python -m mdp_core.cli stream`` (that is ``mdp stream``) as a child
  process, stops it with SIGTERM (it drains and writes ``--summary-json``) and starts it
  again; a child that exits on its own is recorded and restarted.

Both wait for "subscribed" by looking at the simulated gateway's sessions (its public API),
and note the gateway's simulated time then: a run's bars are complete from that point on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from mdp_core.coordinator import RetryPolicy
from mdp_core.dlq import DeadLetterQueue
from mdp_core.edge import Edge
from mdp_core.gateway import SimulatedGateway
from mdp_core.logs import logger
from mdp_core.models import Bar, Quote, Record
from mdp_core.pipeline import Pipeline, PipelineStats
from mdp_core.providers.base import ProviderSource
from mdp_core.providers.ibkr import IBKRStreamSource
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.settings import IBKRSettings
from mdp_core.store.database import Database
from mdp_core.streams import StreamSpec

__all__ = [
    "POISON_SOURCE",
    "CliStream",
    "InProcessStream",
    "RunRecord",
    "StreamDef",
    "Tap",
    "TapEdge",
    "TappedSource",
    "poison_like",
    "wait_subscribed",
]

#: The ``source`` field of every poison record (how the accounting tells them apart).
POISON_SOURCE = "soak-poison"
# Poison rows get times far from the live data, so their keys never meet a real row's.
_POISON_EPOCH = datetime(2000, 1, 3, tzinfo=UTC)
_poison_numbers = itertools.count()
# The (symbol, ts) pairs present among the given ones (the arrays are zipped by unnest).
_LAST_BARS_SQL = (
    "SELECT b.symbol FROM mdp.bars b JOIN unnest($1::text[], $2::timestamptz[]) AS w(symbol, ts) "
    "ON b.symbol = w.symbol AND b.ts = w.ts WHERE b.resolution = '5s'"
)
CATCH_UP_TIMEOUT = 60.0  # seconds for a bars stream to hold the bars before its stop
START_TIMEOUT = 120.0  # seconds for a stream to connect and subscribe (a loaded machine)
STOP_TIMEOUT = 120.0  # seconds for a stream to drain and exit


@dataclass(frozen=True, slots=True)
class StreamDef:
    """One soak stream: its name (also the coordinator's and the DLQ records' ``stream``),
    what it ingests, its IB client id, and how it runs (``inproc`` or ``cli``)."""

    name: str
    mode: Literal["bars", "quotes"]
    symbols: tuple[str, ...]
    client_id: int
    runner: Literal["inproc", "cli"]


@dataclass
class RunRecord:
    """One pipeline run of a stream: when it was subscribed and stopped (simulated epoch
    seconds), its final counters, and for a subprocess its exit code."""

    stream: str
    index: int
    subscribed_sim: float | None = None
    stop_sim: float | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    balanced: bool = False
    error: str | None = None
    exit_code: int | None = None
    how_it_ended: str = ""  # "stopped" (soak end), "sigterm", "exited on its own"
    source_stats: dict[str, Any] | None = None  # in-process runs: IBKRStreamSource.stats()

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "run": self.index,
            "subscribed_sim": _iso(self.subscribed_sim),
            "stop_sim": _iso(self.stop_sim),
            "counters": self.counters,
            "balanced": self.balanced,
            "error": self.error,
            "exit_code": self.exit_code,
            "ended": self.how_it_ended,
            "source": self.source_stats,
        }


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def poison_like(record: Record) -> Record:
    """A record of ``record``'s kind and symbol that breaks a CHECK of its table.

    Built valid, then corrupted behind the model's back (as a buggy producer would), with a
    time in January 2000 so its key never collides with a live row's."""
    ts = _POISON_EPOCH + timedelta(seconds=5 * next(_poison_numbers))
    bad: Record
    if isinstance(record, Bar):
        bad = Bar(record.symbol, ts, 10.0, 12.0, 9.0, 11.0, 100.0, record.resolution,
                  source=POISON_SOURCE)  # fmt: skip
        object.__setattr__(bad, "low", 13.0)  # low above high: bars_prices_check
    else:
        bad = Quote(record.symbol, ts, bid=10.0, ask=10.01, source=POISON_SOURCE)
        object.__setattr__(bad, "bid", -1.0)  # quotes_bid_check
    return bad


class Tap:
    """What an in-process stream's provider handed to the pipeline."""

    def __init__(self) -> None:
        self.received = 0  # real records (poison not included)
        self.values: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # key -> values delivered
        self.duplicate_keys = 0  # a real record whose key was handed over before
        self.poison_pending = 0
        self.poison_sent: list[tuple[Any, ...]] = []  # keys of the poison records
        self.subscribed_sim: float | None = None

    @property
    def keys(self) -> set[tuple[Any, ...]]:
        return set(self.values)

    def note(self, record: Record) -> None:
        key = record.key
        if key in self.values:
            self.duplicate_keys += 1
        else:
            self.values[key] = _values(record)
        self.received += 1


def _values(record: Record) -> tuple[Any, ...]:
    """A record's values in the order the soak report reads them from the table."""
    if isinstance(record, Bar):
        return (record.open, record.high, record.low, record.close, record.volume, record.vwap,
                record.trade_count)  # fmt: skip
    return (record.bid, record.ask, record.last, record.bid_size, record.ask_size,
            record.last_size)  # fmt: skip


class TapEdge:
    """Stands between the IBKR source and its stream's ``Edge``: every record the source
    delivers is noted in ``tap`` (and followed by pending poison) on its way through."""

    def __init__(self, edge: Edge[Any], tap: Tap) -> None:
        self._edge = edge
        self._tap = tap

    def __getattr__(self, name: str) -> Any:  # everything else: the real edge's
        return getattr(self._edge, name)

    def emit(self, record: Record) -> bool:
        self._edge.receive()
        return self.deliver(record)

    def deliver(self, record: Record) -> bool:
        tap = self._tap
        tap.note(record)
        room = self._edge.deliver(record)
        while tap.poison_pending > 0:
            tap.poison_pending -= 1
            bad = poison_like(record)
            tap.poison_sent.append(bad.key)
            room = self._edge.emit(bad) and room
        return room


class TappedSource(ProviderSource[Record]):
    """``inner`` (a push source) behind a ``TapEdge``."""

    name = "soak-ibkr"
    push = True

    def __init__(self, inner: IBKRStreamSource, tap: Tap, sim_now: Callable[[], float]) -> None:
        super().__init__(inner.symbols, inner.mode, inner.resolution or "5s")
        self.resolution = inner.resolution
        self.default_overflow = inner.default_overflow
        self.inner = inner
        self.tap = tap
        self._sim_now = sim_now

    def attach(self, edge: Edge[Any]) -> None:
        super().attach(edge)
        self.inner.attach(TapEdge(edge, self.tap))  # type: ignore[arg-type]

    async def start(self) -> None:
        await self.inner.start()
        self.tap.subscribed_sim = self._sim_now()

    async def stop(self) -> None:
        await self.inner.stop()

    def stream(self) -> AsyncIterator[Record]:
        return self.inner.stream()


def ibkr_settings(gw: SimulatedGateway, client_id: int) -> IBKRSettings:
    """Settings for a soak stream: this gateway, quick reconnects (capped at 2 s)."""
    return IBKRSettings(
        host=gw.host,
        port=gw.port,
        client_id=client_id,
        connect_timeout=10.0,
        reconnect_initial_backoff=0.2,
        reconnect_max_backoff=2.0,
    )


def subscribed(gw: SimulatedGateway, sdef: StreamDef) -> bool:
    """Whether client ``sdef.client_id`` holds a live subscription for each of its symbols."""
    for info in gw.sessions():
        if info.client_id == sdef.client_id:
            subs = info.bar_req_ids if sdef.mode == "bars" else info.tick_req_ids
            return len(subs) >= len(sdef.symbols)
    return False


async def wait_subscribed(
    gw: SimulatedGateway,
    sdef: StreamDef,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
) -> bool:
    """Wait until ``sdef`` is subscribed (True), ``alive()`` turns false or ``timeout``
    passes (False)."""
    deadline = time.monotonic() + timeout
    while not subscribed(gw, sdef):
        if time.monotonic() > deadline or not alive():
            return False
        await asyncio.sleep(0.05)
    return True


def last_bars_before(gw: SimulatedGateway, sdef: StreamDef, until: float) -> dict[str, datetime]:
    """Per symbol, the start of the gateway's last 5-second bar that ended by ``until``."""
    end = sim_floor(until)
    out = {}
    for symbol in sdef.symbols:
        bars = gw.bars_between(symbol, end - 300, end)
        if bars:
            out[symbol] = bars[-1].start
    return out


async def wait_caught_up(
    check: Callable[[], Awaitable[bool]], sdef: StreamDef, timeout: float = CATCH_UP_TIMEOUT
) -> bool:
    """Wait until ``check()`` (the stream holds the last bar before its stop) or ``timeout``.

    Quotes streams have nothing to wait for. A timeout is logged, not raised: the missing
    bars then show in the accounting."""
    if sdef.mode != "bars":
        return True
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            logger.error("soak: {} did not receive the bars before its stop", sdef.name)
            return False
        await asyncio.sleep(0.05)
    return True


class InProcessStream:
    """A ``Pipeline`` over a ``TappedSource`` for the whole soak (one run)."""

    def __init__(
        self,
        sdef: StreamDef,
        db: Database,
        dlq: DeadLetterQueue,
        gw: SimulatedGateway,
        retry_policy: RetryPolicy,
    ) -> None:
        self.sdef = sdef
        self.gw = gw
        self.tap = Tap()
        self.source: IBKRStreamSource | None = None
        self.runs: list[RunRecord] = []
        settings = ibkr_settings(gw, sdef.client_id)
        registry = ProviderRegistry(entry_points=False)
        registry.register("soak-ibkr", self._build)
        self._settings = settings
        spec = StreamSpec(
            name=sdef.name, provider="soak-ibkr", mode=sdef.mode, symbols=list(sdef.symbols)
        )
        self.pipeline = Pipeline(
            spec, db, registry=registry, dlq=dlq, retry_policy=retry_policy,
            heartbeat_interval=5.0, lock_check_interval=1.0,
        )  # fmt: skip
        self._task: asyncio.Task[PipelineStats] | None = None

    def _build(self, **kwargs: Any) -> ProviderSource:
        self.source = IBKRStreamSource.from_config(ibkr_settings=self._settings, **kwargs)
        return TappedSource(self.source, self.tap, self.gw.now)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the pipeline; return once its source is subscribed (or raise)."""
        self.runs.append(RunRecord(self.sdef.name, 1))
        self._task = asyncio.create_task(self.pipeline.run(), name=f"soak-{self.sdef.name}")
        deadline = time.monotonic() + START_TIMEOUT
        while self.tap.subscribed_sim is None:
            if self._task.done():
                await self._task  # raises the pipeline's error
                raise RuntimeError(f"stream {self.sdef.name} ended before it subscribed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {self.sdef.name} did not subscribe in time")
            await asyncio.sleep(0.05)
        self.runs[-1].subscribed_sim = self.tap.subscribed_sim

    async def abort(self) -> None:
        """After a failed soak: stop the pipeline without waiting for anything else."""
        if self._task is None or self._task.done():
            return
        self.pipeline.request_stop()
        _, pending = await asyncio.wait([self._task], timeout=STOP_TIMEOUT)
        for task in pending:
            task.cancel()

    def inject_poison(self, rows: int) -> None:
        self.tap.poison_pending += rows

    async def stop(self) -> None:
        """Note the stop time, wait until the source holds every bar that ended by then,
        ask the pipeline to stop, wait for its drain, record the run."""
        run = self.runs[-1]
        run.stop_sim = self.gw.now()
        run.how_it_ended = "stopped"
        last = last_bars_before(self.gw, self.sdef, run.stop_sim)

        async def holds_last_bars() -> bool:
            return all((sym, "5s", ts) in self.tap.values for sym, ts in last.items())

        await wait_caught_up(holds_last_bars, self.sdef)
        assert self._task is not None
        self.pipeline.request_stop()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.shield(self._task)
        except Exception as exc:
            run.error = f"{type(exc).__name__}: {exc}"
        stats = self.pipeline.stats()
        run.counters = stats.to_dict()
        run.balanced = stats.balanced
        if run.error is None and stats.error is not None:
            run.error = stats.error
        if self.source is not None:
            run.source_stats = {
                k: v for k, v in self.source.stats().items() if isinstance(v, int | str | float)
            }


class CliStream:
    """``mdp stream`` in a child process: started, SIGTERMed and restarted by the soak."""

    def __init__(
        self,
        sdef: StreamDef,
        gw: SimulatedGateway,
        db: Database,
        home: Path,
        workdir: Path,
        log_level: str = "WARNING",
    ) -> None:
        self.sdef = sdef
        self.gw = gw
        self.db = db
        self.workdir = workdir
        self.runs: list[RunRecord] = []
        self.unexpected_exits = 0
        self.failed_starts = 0  # children that exited before subscribing (then retried)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MDP_")},
            "MDP_PG_DSN": db.dsn,
            "MDP_HOME": str(home),
            "MDP_LOG_LEVEL": log_level,
            "MDP_IBKR_HOST": gw.host,
            "MDP_IBKR_PORT": str(gw.port),
            "MDP_IBKR_CLIENT_ID": str(sdef.client_id),
            "MDP_IBKR_CONNECT_TIMEOUT": "10",
            "MDP_IBKR_RECONNECT_INITIAL_BACKOFF": "0.2",
            "MDP_IBKR_RECONNECT_MAX_BACKOFF": "2",
            # a short drain budget: a stop in a frozen database spills to the spool
            "MDP_COORDINATOR_DRAIN_TIMEOUT": "5",
        }
        if sdef.mode == "quotes":  # a small queue: a frozen database backs up to the channel
            self.env["MDP_COORDINATOR_CAPACITY"] = "2000"
        self._proc: asyncio.subprocess.Process | None = None
        self.cycle = asyncio.Lock()  # one stop/start cycle at a time (faults may overlap)
        self._watcher: asyncio.Task[None] | None = None
        self._expect_exit = False
        self._log = workdir / f"{sdef.name}.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _summary_path(self, index: int) -> Path:
        return self.workdir / f"{self.sdef.name}-run{index}.json"

    def command(self, index: int) -> list[str]:
        s = self.sdef
        return [
            sys.executable, "-m", "mdp_core.cli", "stream",
            "--provider", "ibkr", "--mode", s.mode, "--symbols", ",".join(s.symbols),
            "--name", s.name, "--summary-json", str(self._summary_path(index)), "--quiet",
            *(["--channel-capacity", "256"] if s.mode == "quotes" else []),
        ]  # fmt: skip

    async def start(self) -> None:
        """Start a new run; return once it is subscribed at the gateway.

        A child that exits before subscribing (the gateway or the database is down right
        then) is recorded as a failed start and started again a second later, as a
        supervisor would, for up to ``START_TIMEOUT`` seconds; then this raises."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            index = len(self.runs) + 1
            run = RunRecord(self.sdef.name, index)
            self.runs.append(run)
            self._expect_exit = False
            with self._log.open("ab") as log:
                log.write(f"--- run {index} ---\n".encode())
                log.flush()
                self._proc = proc = await asyncio.create_subprocess_exec(
                    *self.command(index), env=self.env, cwd=str(self.workdir),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                )  # fmt: skip
            left = max(0.0, deadline - time.monotonic())
            if await wait_subscribed(self.gw, self.sdef, left, alive=_alive(proc)):
                run.subscribed_sim = self.gw.now()
                self._watcher = asyncio.create_task(self._watch(proc, run))
                return
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            self._finish(run, "failed to start")
            self.failed_starts += 1
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"mdp stream {self.sdef.name} did not subscribe within {START_TIMEOUT:.0f}s "
                    f"(last exit code {proc.returncode}); see {self._log}"
                )
            logger.warning(
                "soak: mdp stream {} run {} exited before subscribing (code {}); retrying",
                self.sdef.name, index, proc.returncode,
            )  # fmt: skip
            await asyncio.sleep(1.0)

    async def _watch(self, proc: asyncio.subprocess.Process, run: RunRecord) -> None:
        """Notice a child that exits without being asked to; restart it."""
        await proc.wait()
        if self._expect_exit:
            return
        self.unexpected_exits += 1
        run.stop_sim = self.gw.now()
        self._finish(run, "exited on its own")
        logger.error(
            "soak: mdp stream {} exited on its own (code {}); restarting it",
            self.sdef.name, proc.returncode,
        )  # fmt: skip
        await asyncio.sleep(1.0)
        try:
            await self.start()
        except Exception as exc:
            logger.error("soak: restarting {} failed: {}", self.sdef.name, exc)

    def _finish(self, run: RunRecord, how: str) -> None:
        proc = self._proc
        run.exit_code = proc.returncode if proc is not None else None
        run.how_it_ended = how
        path = self._summary_path(run.index)
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            run.error = run.error or f"no summary JSON (exit code {run.exit_code})"
            if how == "failed to start":
                run.error += f": {self._last_log_line()}"
            return
        run.balanced = bool(summary.pop("balanced", False))
        run.counters = summary
        if summary.get("error"):
            run.error = str(summary["error"])

    async def abort(self) -> None:
        """After a failed soak: SIGTERM the child (SIGKILL if it lingers), no waiting."""
        proc = self._proc
        if self._watcher is not None:
            self._watcher.cancel()
        if proc is None or proc.returncode is not None:
            return
        self._expect_exit = True
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def _last_log_line(self) -> str:
        lines = self._log.read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""

    async def stop(self, how: str = "stopped") -> None:
        """Note the stop time, wait until the table holds every bar that ended by then,
        SIGTERM the child, wait for it to drain and exit, record the run."""
        proc, run = self._proc, self.runs[-1]
        if proc is None or proc.returncode is not None:
            return
        run.stop_sim = self.gw.now()
        last = last_bars_before(self.gw, self.sdef, run.stop_sim)

        async def stored_last_bars() -> bool:
            try:
                rows = await self.db.pool.fetch(_LAST_BARS_SQL, list(last), list(last.values()))
            except Exception:  # the database may be coming back
                return False
            return len(rows) == len(last)

        await wait_caught_up(stored_last_bars, self.sdef)
        if proc.returncode is not None:
            return  # it exited meanwhile: its watcher records that
        self._expect_exit = True
        if self._watcher is not None:
            self._watcher.cancel()
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            run.error = f"did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM: killed"
        self._finish(run, how)


def _alive(proc: asyncio.subprocess.Process) -> Callable[[], bool]:
    return lambda: proc.returncode is None


def sim_floor(t: float, step: int = 5) -> int:
    return math.floor(t / step) * step
