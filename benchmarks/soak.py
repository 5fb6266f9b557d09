"""Soak: the whole pipeline under a seeded fault schedule, with per-stream accounting.

    python -m benchmarks.soak                       # 30 minutes, seed 1
    python -m benchmarks.soak --minutes 10 --seed 7
    make soak MINUTES=10 SEED=7                     # the same through make
    python -m benchmarks.soak --minutes 1 --faults gateway_restart=1,db_restart=1,poison=1

What runs: the simulated IB Gateway (time compressed, so many 5-second bars flow) and a
dedicated embedded PostgreSQL in a temporary directory (destroyed at the end); four
streams by default, each with its own IB client id and symbols:

- ``soak-bars``: 5-second bars, an in-process ``Pipeline`` (poison rows pushed into it);
- ``soak-quotes``: quotes, an in-process ``Pipeline`` (poison rows pushed into it);
- ``soak-cli-bars`` / ``soak-cli-quotes``: ``mdp stream`` child processes, stopped with
  SIGTERM and restarted by the ``sigterm`` fault.

The in-process pipelines retry a failing batch for under a second before spooling it, so
database outages put real data through the DLQ (replayed at the end); the ``mdp stream``
children use the default stream policy (about 20 s), riding short outages out.

Faults (``soak_plan.FAULT_KINDS``) are drawn from the seed: gateway restarts with a refused
window, 1100 -> 1101 and 1100 -> 1102, 2103 -> 2104 farm blips, database restarts
(immediate stop), database stalls (every PostgreSQL process SIGSTOPped), poison rows and
SIGTERM + restart of the child streams. Each lane of faults (gateway, database, SIGTERM,
poison) runs one fault at a time, the lanes side by side (``--sequential``: one fault at a
time overall); after each fault the soak waits until every stream is subscribed and
committing again, and reports how long that took.

At the end everything stops and drains, the DLQ is replayed, and the accounting per stream
and per run is printed (see ``soak_report``) and written to ``benchmarks/results/soak.json``
(library warnings go to ``benchmarks/results/soak.log``). The exit status is 1 if any
check does not hold, with the failing checks listed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine, now_iso
from benchmarks.soak_faults import Event, FaultInjector, resume_postgres
from benchmarks.soak_plan import (
    FAULT_KINDS,
    LANES,
    Fault,
    default_counts,
    parse_fault_counts,
    plan_faults,
)
from benchmarks.soak_report import (
    Check,
    StreamAccount,
    account,
    checks,
    dlq_after,
    dlq_before,
    render,
)
from benchmarks.soak_streams import CliStream, InProcessStream, StreamDef
from mdp_core.coordinator import RetryPolicy
from mdp_core.dlq import DeadLetterQueue, ReplayResult
from mdp_core.gateway import SimulatedGateway
from mdp_core.logs import configure_logging, logger
from mdp_core.store import BarsSink, Database, QuotesSink
from mdp_core.store.embedded import EmbeddedServer

__all__ = ["STREAM_KINDS", "SoakConfig", "SoakResult", "main", "soak"]

#: The streams the soak can run: name -> (mode, runner, IB client id).
STREAM_KINDS: dict[str, tuple[str, str, int]] = {
    "bars": ("bars", "inproc", 101),
    "quotes": ("quotes", "inproc", 102),
    "cli-bars": ("bars", "cli", 103),
    "cli-quotes": ("quotes", "cli", 104),
}
SYMBOL_POOL = (
    "AAPL", "MSFT", "SPY", "QQQ", "GOOGL", "AMZN", "NVDA", "TSLA",
    "META", "IWM", "AMD", "NFLX", "INTC", "ORCL", "CSCO", "ADBE",
)  # fmt: skip
#: In-process streams spool a failing batch after ~0.7 s of retries (DLQ as a write-ahead log).
INPROC_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=1.0)


@dataclass
class SoakConfig:
    """How long, how fast, which streams and which faults.

    ``faults`` None means ``default_counts(minutes)``; ``overlap`` runs the fault lanes
    (gateway, database, process, data) side by side, else one fault at a time."""

    minutes: float = 30.0
    seed: int = 1
    time_compression: float = 30.0
    streams: tuple[str, ...] = tuple(STREAM_KINDS)
    symbols_per_stream: int = 3
    faults: dict[str, int] | None = None
    overlap: bool = True
    warmup: float = 5.0
    cooldown: float = 10.0
    json_path: Path | None = RESULTS_DIR / "soak.json"
    log_path: Path | None = RESULTS_DIR / "soak.log"

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"minutes {self.minutes!r}: expected a number > 0")
        if not 1 <= self.time_compression <= 600:
            raise ValueError(f"time_compression {self.time_compression!r}: expected 1..600")
        unknown = [s for s in self.streams if s not in STREAM_KINDS]
        if unknown or not self.streams:
            raise ValueError(
                f"streams {list(self.streams)!r}: expected one or more of {', '.join(STREAM_KINDS)}"
            )
        if len(self.streams) * self.symbols_per_stream > len(SYMBOL_POOL):
            raise ValueError(
                f"{len(self.streams)} streams x {self.symbols_per_stream} symbols: at most "
                f"{len(SYMBOL_POOL)} symbols available (each stream has its own)"
            )
        if self.symbols_per_stream < 1:
            raise ValueError(f"symbols_per_stream {self.symbols_per_stream!r}: expected >= 1")

    @property
    def duration(self) -> float:
        return self.minutes * 60.0

    def fault_counts(self) -> dict[str, int]:
        return dict(self.faults) if self.faults is not None else default_counts(self.minutes)

    def stream_defs(self) -> list[StreamDef]:
        out = []
        n = self.symbols_per_stream
        for i, key in enumerate(self.streams):
            mode, runner, client_id = STREAM_KINDS[key]
            symbols = SYMBOL_POOL[i * n : (i + 1) * n]
            out.append(StreamDef(f"soak-{key}", mode, symbols, client_id, runner))  # type: ignore[arg-type]
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = self.fault_counts()
        data["json_path"] = _shown(self.json_path)
        data["log_path"] = _shown(self.log_path)
        data["streams"] = [asdict(s) for s in self.stream_defs()]
        return data


@dataclass
class SoakResult:
    config: dict[str, Any]
    plan: list[Fault]
    timeline: list[Event]
    accounts: list[StreamAccount]
    checks: list[Check]
    replay: ReplayResult | None
    started_at: str
    wall_seconds: float
    text: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": "soak",
            "started_at": self.started_at,
            "wall_seconds": round(self.wall_seconds, 1),
            "machine": machine(),
            "config": self.config,
            "plan": [asdict(f) for f in self.plan],
            "timeline": [e.to_dict() for e in self.timeline],
            "streams": [a.to_dict() for a in self.accounts],
            "replay": asdict(self.replay) if self.replay else None,
            "checks": [asdict(c) for c in self.checks],
            "errors": self.errors,
            "ok": self.ok,
        }


Progress = Callable[[str], None]


async def soak(config: SoakConfig, progress: Progress | None = None) -> SoakResult:
    """Run the soak described by ``config``; return its accounting (never raises for a
    failed check: see ``SoakResult.ok``)."""
    say = progress or (lambda line: None)
    started_at, wall0 = now_iso(), time.monotonic()
    plan = plan_faults(config.seed, config.duration, config.fault_counts(),
                       warmup=config.warmup, cooldown=config.cooldown)  # fmt: skip
    defs = config.stream_defs()
    result = SoakResult(config.to_dict(), plan, [], [], [], None, started_at, 0.0)
    root = Path(tempfile.mkdtemp(prefix="mdp-soak-"))
    server = EmbeddedServer(root / "pg")
    workdir = root / "work"
    workdir.mkdir()
    streams: list[InProcessStream | CliStream] = []
    try:
        async with Database.connect(home=root, max_size=8) as db:
            dlq = DeadLetterQueue(root / "home" / "dlq")
            symbols = [sym for d in defs for sym in d.symbols]
            async with SimulatedGateway(
                symbols, port=0, seed=config.seed, time_compression=config.time_compression
            ) as gw:
                say(f"gateway on port {gw.port} (x{config.time_compression:g}), PostgreSQL in "
                    f"{root}; starting {len(defs)} streams")  # fmt: skip
                for d in defs:
                    if d.runner == "inproc":
                        streams.append(InProcessStream(d, db, dlq, gw, INPROC_RETRY))
                    else:
                        streams.append(CliStream(d, gw, db, root / "home", workdir))
                await asyncio.gather(*(s.start() for s in streams))
                t0 = time.monotonic()
                injector = FaultInjector(gw, server, db, streams, t0)
                result.timeline = injector.timeline
                say(f"streaming; {len(plan)} faults planned over {config.minutes:g} min "
                    f"(seed {config.seed})")  # fmt: skip

                async def lane(faults: list[tuple[int, Fault]]) -> None:
                    for number, fault in faults:
                        await asyncio.sleep(max(0.0, t0 + fault.at - time.monotonic()))
                        e = await injector.run(fault, number)
                        outcome = "recovered" if e.recovered else "NOT recovered"
                        say(f"[{e.ran_at:7.1f}s] {number}/{len(plan)} {e.kind} "
                            f"{fault.describe()}: {e.note.strip()} "
                            f"({outcome} in {e.took:.1f}s)")  # fmt: skip

                lanes: dict[str, list[tuple[int, Fault]]] = {}
                for number, fault in enumerate(plan, 1):
                    key = LANES[fault.kind] if config.overlap else "all"
                    lanes.setdefault(key, []).append((number, fault))
                async with asyncio.TaskGroup() as group:  # a failing lane cancels the others
                    for faults in lanes.values():
                        group.create_task(lane(faults))
                await asyncio.sleep(max(0.0, t0 + config.duration - time.monotonic()))
                say("stopping every stream and draining")
                await asyncio.gather(*(s.stop() for s in streams))
            say("replaying the DLQ")
            names = [d.name for d in defs]
            counts = dlq_before(dlq, names)
            result.replay = await dlq.replay([BarsSink(db), QuotesSink(db)], max_attempts=1)
            dlq_after(dlq, counts)
            result.accounts = await account(streams, gw, db, counts)
    except Exception as exc:
        logger.opt(exception=exc).error("soak: aborted")
        cause = exc.exceptions[0] if isinstance(exc, ExceptionGroup) else exc
        result.errors.append(f"soak aborted: {type(cause).__name__}: {cause}")
    finally:
        await _kill_leftovers(streams)
        _keep_child_logs(workdir, config.log_path)
        resume_postgres(server)
        with contextlib.suppress(Exception):
            server.destroy()
        shutil.rmtree(root, ignore_errors=True)
    result.checks = checks(result.accounts, result.timeline, streams)
    result.wall_seconds = time.monotonic() - wall0
    result.text = render(result.config, result.timeline, result.accounts, result.checks)
    if result.errors:
        result.text += "\n" + "\n".join(f"ERROR: {e}" for e in result.errors)
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return result


async def _kill_leftovers(streams: list[InProcessStream | CliStream]) -> None:
    """After an abort: no child process or pipeline task may outlive the soak."""
    for s in streams:
        with contextlib.suppress(Exception):
            await s.abort()


def _shown(path: Path | None) -> str | None:
    """``path`` as written in the result: relative to the project when it is inside it, so a
    committed result names no machine's directories."""
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(RESULTS_DIR.parent.parent))
    except ValueError:
        return str(path)


def _keep_child_logs(workdir: Path, log_path: Path | None) -> None:
    """Append the ``mdp stream`` children's output to the soak log (the workdir goes)."""
    if log_path is None:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as out:
        for path in sorted(workdir.glob("*.log")):
            out.write(f"\n===== {path.name} =====\n")
            out.write(path.read_text(errors="replace"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="fault kinds: " + "; ".join(f"{k}: {v}" for k, v in FAULT_KINDS.items()),
    )
    add = parser.add_argument
    add("--minutes", type=float, default=30.0, help="soak length (default 30)")
    add("--seed", type=int, default=1, help="seed of the fault schedule and the market data")
    add("--time-compression", type=float, default=30.0,
        help="simulated seconds per real second (default 30)")  # fmt: skip
    add("--streams", default=",".join(STREAM_KINDS),
        help=f"comma-separated, of {', '.join(STREAM_KINDS)} (default: all)")  # fmt: skip
    add("--symbols-per-stream", type=int, default=3)
    add("--faults", default=None, metavar="KIND=N,...",
        help="fault counts instead of the default schedule (kinds not named: 0)")  # fmt: skip
    add("--sequential", action="store_true",
        help="one fault at a time (default: gateway, database, SIGTERM and poison faults "
        "may overlap)")  # fmt: skip
    add("--json", type=Path, default=RESULTS_DIR / "soak.json", help="where the JSON goes")
    add("--log", type=Path, default=RESULTS_DIR / "soak.log",
        help="library warnings and the mdp stream children's output")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        config = SoakConfig(
            minutes=args.minutes,
            seed=args.seed,
            time_compression=args.time_compression,
            streams=tuple(s.strip() for s in args.streams.split(",") if s.strip()),
            symbols_per_stream=args.symbols_per_stream,
            faults=parse_fault_counts(args.faults) if args.faults is not None else None,
            overlap=not args.sequential,
            json_path=args.json,
            log_path=args.log,
        )
    except ValueError as exc:
        parser.error(str(exc))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text("")
    configure_logging("WARNING", sink=str(args.log))
    # ib_async logs through the standard logging module: into the same file
    logging.basicConfig(filename=str(args.log), level=logging.WARNING, force=True)

    def say(line: str) -> None:
        print(line, flush=True)

    result = asyncio.run(soak(config, say))
    print()
    print(result.text)
    print(f"\nJSON: {args.json}   library warnings and child output: {args.log}")
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
