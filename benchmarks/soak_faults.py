"""Running the soak's faults against the real pieces, and telling when the system recovered.

Every fault uses public APIs only: ``SimulatedGateway`` (``restart``, ``connectivity_lost``,
``connectivity_restored``, ``pause_data``, ``broadcast_error``), ``EmbeddedServer``
(``stop("immediate")``/``start``), SIGSTOP/SIGCONT of the PostgreSQL processes, the
in-process streams' poison tap and SIGTERM of the ``mdp stream`` children.

After a fault the injector waits until the system has recovered: every stream is
subscribed at the gateway again and has committed new rows since the fault ended (poison:
until it was pushed). That time is reported; a fault not recovered from within
``RECOVERY_TIMEOUT`` is a failure of the soak.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil

from benchmarks.soak_plan import Fault
from benchmarks.soak_streams import CliStream, InProcessStream, subscribed
from mdp_core.gateway import SimulatedGateway
from mdp_core.logs import logger
from mdp_core.store.database import Database
from mdp_core.store.embedded import EmbeddedServer

__all__ = ["RECOVERY_TIMEOUT", "Event", "FaultInjector", "resume_postgres"]

RECOVERY_TIMEOUT = 120.0  # seconds

Stream = InProcessStream | CliStream

# Identifiers are code constants: one query per table.
_NEW_ROWS_SQL = {
    "bars": "SELECT count(*) FROM mdp.bars WHERE symbol = ANY($1::text[]) AND ingested_at > $2",
    "quotes": "SELECT count(*) FROM mdp.quotes WHERE symbol = ANY($1::text[]) AND ingested_at > $2",
}


@dataclass
class Event:
    """One line of the fault timeline."""

    number: int
    planned_at: float  # seconds after the start, from the schedule
    ran_at: float  # seconds after the start, when it actually began
    sim_time: float  # gateway time when it began (epoch seconds)
    kind: str
    params: dict[str, Any]
    took: float = 0.0  # seconds from its start to recovery
    recovered: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "planned_at_s": self.planned_at,
            "ran_at_s": round(self.ran_at, 2),
            "sim_time": datetime.fromtimestamp(self.sim_time, UTC).isoformat(timespec="seconds"),
            "kind": self.kind,
            "params": self.params,
            "took_s": round(self.took, 2),
            "recovered": self.recovered,
            "note": self.note,
        }


def _postgres_processes(server: EmbeddedServer) -> list[psutil.Process]:
    pid = server.status().pid
    if pid is None:
        return []
    master = psutil.Process(pid)
    return [master, *master.children(recursive=True)]


def resume_postgres(server: EmbeddedServer) -> None:
    """SIGCONT every PostgreSQL process (safe to call when none is stopped)."""
    with contextlib.suppress(psutil.Error, OSError):
        for proc in _postgres_processes(server):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)


class FaultInjector:
    """Runs faults one at a time against ``gw``, ``server`` and ``streams``."""

    def __init__(
        self,
        gw: SimulatedGateway,
        server: EmbeddedServer,
        db: Database,
        streams: list[Stream],
        t0: float,
    ) -> None:
        self.gw = gw
        self.server = server
        self.db = db
        self.streams = streams
        self.t0 = t0
        self.timeline: list[Event] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, fault: Fault, number: int) -> Event:
        """Inject ``fault`` (``number`` in the plan), wait for recovery, add the event to
        the timeline (kept in plan order)."""
        event = Event(
            number, fault.at, self.elapsed(), self.gw.now(), fault.kind, dict(fault.params)
        )
        logger.warning("soak: fault {} {} {}", event.number, fault.kind, fault.describe())
        started = time.monotonic()
        try:
            note = await getattr(self, f"_{fault.kind}")(**fault.params)
            event.note = note or ""
            event.recovered = await self._recovered(fault.kind, started)
            if not event.recovered:
                event.note += f" NOT RECOVERED within {RECOVERY_TIMEOUT:.0f}s"
        except Exception as exc:
            event.note += f" FAILED: {type(exc).__name__}: {exc}"
            logger.opt(exception=exc).error("soak: fault {} failed", fault.kind)
        event.took = time.monotonic() - started
        self.timeline.append(event)
        self.timeline.sort(key=lambda e: e.number)
        return event

    # -- recovery -------------------------------------------------------------------------

    async def _recovered(self, kind: str, started: float) -> bool:
        if kind == "poison":
            return True  # _poison waited for the rows to be pushed
        since = datetime.now(UTC)
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        waiting = [s for s in self.streams if s.running]
        while waiting:
            still = []
            for stream in waiting:
                if not (subscribed(self.gw, stream.sdef) and await self._new_rows(stream, since)):
                    still.append(stream)
            waiting = still
            if waiting:
                if time.monotonic() > deadline:
                    names = ", ".join(s.sdef.name for s in waiting)
                    logger.error("soak: {} not flowing again after {}", names, kind)
                    return False
                await asyncio.sleep(0.25)
        return True

    async def _new_rows(self, stream: Stream, since: datetime) -> bool:
        sql = _NEW_ROWS_SQL[stream.sdef.mode]
        try:
            async with asyncio.timeout(10):
                n = await self.db.pool.fetchval(sql, list(stream.sdef.symbols), since)
        except Exception:  # the database may still be coming back
            return False
        return bool(n)

    # -- the faults -----------------------------------------------------------------------

    async def _gateway_restart(self, down: float) -> str:
        await self.gw.restart(down)
        return f"gateway refused connections for {down:.1f}s"

    async def _lost_1101(self, down: float) -> str:
        self.gw.connectivity_lost()
        await asyncio.sleep(down)
        self.gw.connectivity_restored(data_lost=True)
        return "1100, data paused; 1101 (subscriptions dropped)"

    async def _lost_1102(self, down: float) -> str:
        self.gw.connectivity_lost()
        await asyncio.sleep(down)
        self.gw.connectivity_restored(data_lost=False)
        return "1100, data paused; 1102 (subscriptions kept)"

    async def _farm_blip(self, down: float) -> str:
        self.gw.pause_data(True)
        self.gw.broadcast_error(2103, "Market data farm connection is broken:usfarm")
        await asyncio.sleep(down)
        self.gw.pause_data(False)
        self.gw.broadcast_error(2104, "Market data farm connection is OK:usfarm")
        return "2103, data paused; 2104"

    async def _db_restart(self, down: float) -> str:
        await asyncio.to_thread(self.server.stop, "immediate")
        await asyncio.sleep(down)
        await asyncio.to_thread(self.server.start)
        return f"PostgreSQL down {down:.1f}s (immediate stop)"

    async def _db_stall(self, down: float) -> str:
        async with self._frozen_postgres() as stopped:
            await asyncio.sleep(down)
        return f"{len(stopped)} PostgreSQL processes stopped for {down:.1f}s"

    @contextlib.asynccontextmanager
    async def _frozen_postgres(self) -> AsyncIterator[list[psutil.Process]]:
        """Every PostgreSQL process SIGSTOPped for the block (SIGCONTed after, always)."""
        stopped: list[psutil.Process] = []
        try:
            for proc in _postgres_processes(self.server):  # the postmaster first: no new forks
                proc.send_signal(signal.SIGSTOP)
                stopped.append(proc)
            yield stopped
        finally:
            for proc in stopped:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGCONT)

    async def _db_freeze_sigterm(self, down: float) -> str:
        targets = [s for s in self.streams if isinstance(s, CliStream) and s.sdef.mode == "quotes"]
        async with contextlib.AsyncExitStack() as held:
            for stream in targets:
                await held.enter_async_context(stream.cycle)
            return await self._freeze_and_sigterm(down, [s for s in targets if s.running])

    async def _freeze_and_sigterm(self, down: float, targets: list[CliStream]) -> str:
        async with self._frozen_postgres() as stopped:
            await asyncio.sleep(down / 3)
            stops = [asyncio.create_task(s.stop("sigterm in a frozen database")) for s in targets]
            await asyncio.sleep(down - down / 3)
        await asyncio.gather(*stops)  # the drains finish now (or spilled to the spool)
        ended = []
        for stream in targets:
            run = stream.runs[-1]
            c = run.counters
            ended.append(
                f"{stream.sdef.name} run {run.index} exit {run.exit_code}: received "
                f"{c.get('received')}, dead-lettered {c.get('dead_lettered')}, dropped "
                f"{c.get('dropped')}, balanced {run.balanced}"
            )
            await stream.start()
        return (
            f"{len(stopped)} PostgreSQL processes stopped for {down:.1f}s, SIGTERM after "
            f"{down / 3:.1f}s; " + "; ".join(ended) + "; restarted"
        )

    async def _poison(self, rows: int) -> str:
        targets = [s for s in self.streams if isinstance(s, InProcessStream) and s.running]
        before = {s.sdef.name: len(s.tap.poison_sent) for s in targets}
        for stream in targets:
            stream.inject_poison(rows)
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while any(len(s.tap.poison_sent) < before[s.sdef.name] + rows for s in targets):
            if time.monotonic() > deadline:
                raise TimeoutError("poison rows were not pushed (no data flowing?)")
            await asyncio.sleep(0.05)
        return f"{rows} poison row(s) into each of {', '.join(before)}"

    async def _sigterm(self, down: float) -> str:
        targets = [s for s in self.streams if isinstance(s, CliStream) and s.running]

        async def cycle(stream: CliStream) -> str:
            async with stream.cycle:
                await stream.stop("sigterm")
                run = stream.runs[-1]
                await asyncio.sleep(down)
                await stream.start()
            return f"{stream.sdef.name} run {run.index} exit {run.exit_code}"

        results = await asyncio.gather(*(cycle(s) for s in targets))
        return "; ".join(results) + f"; restarted after {down:.1f}s"
