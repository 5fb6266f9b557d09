"""Plumbing shared by the example pipelines, kept out of them so they read as documentation.

``run(pipeline, symbols=...)`` gives every example the same command line (``--seconds``,
``--symbols``), then:

- IB: the Gateway/TWS configured by ``MDP_IBKR_HOST``/``MDP_IBKR_PORT``, or else a simulated
  IB Gateway started in this process on a free port (simulated time runs faster, so
  5-second bars flow quickly; the first line printed says which);
- the database: ``MDP_PG_DSN``, or else the embedded PostgreSQL under ``.mdp/``;
- stopping: Ctrl-C, SIGTERM or ``--seconds`` call what the pipeline registered with
  ``ex.on_stop(...)`` (the runtime's ``stop``), after which the pipeline drains and returns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click

from mdp_core import IBKRSettings, configure_logging
from mdp_core.gateway import ibkr_endpoint
from mdp_core.store import Database


@dataclass
class Example:
    """What a pipeline gets: its symbols, where IB is, the database, and the stop signal."""

    symbols: list[str]
    ibkr: IBKRSettings
    db: Database
    stopping: asyncio.Event
    started: float = field(default_factory=time.monotonic)
    _on_stop: list[asyncio.Task[Any]] = field(default_factory=list)

    def on_stop(self, action: Callable[[], Awaitable[Any]]) -> None:
        """Run ``action()`` once Ctrl-C / SIGTERM / ``--seconds`` asks the example to stop."""

        async def wait_then_act() -> None:
            await self.stopping.wait()
            print("stopping: draining what is in flight...", flush=True)
            await action()

        self._on_stop.append(asyncio.create_task(wait_then_act()))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self, written: int, dead_lettered: int = 0, dropped: int = 0) -> None:
        """The last line of every example: rows written, dead-lettered, dropped, rate."""
        elapsed = self.elapsed()
        print(
            f"summary: {written:,} rows written, {dead_lettered:,} dead-lettered, "
            f"{dropped:,} dropped in {elapsed:.1f}s ({written / elapsed:,.0f} rows/s)",
            flush=True,
        )


Pipeline = Callable[[Example], Awaitable[None]]


def run(pipeline: Pipeline, *, symbols: str, **gateway_options: Any) -> None:
    """Parse ``--seconds``/``--symbols`` and run ``pipeline``; ``gateway_options`` configure the
    simulated gateway (used only when no IB is configured)."""

    @click.command(help=(pipeline.__doc__ or "").strip() or None)
    @click.option("--seconds", type=float, default=None, help="Stop after N seconds.")
    @click.option("--symbols", "symbol_list", default=symbols, show_default=True)
    def main(seconds: float | None, symbol_list: str) -> None:
        os.environ.setdefault("MDP_LOG_LEVEL", "WARNING")  # the examples print their own lines
        configure_logging()
        chosen = [s.strip().upper() for s in symbol_list.split(",") if s.strip()]
        asyncio.run(_main(pipeline, chosen, seconds, gateway_options))

    main()


async def _main(
    pipeline: Pipeline, symbols: list[str], seconds: float | None, gateway_options: dict[str, Any]
) -> None:
    async with Database.connect() as db, ibkr_endpoint(symbols, **gateway_options) as ib:
        print(ib.describe(), flush=True)
        print(f"database: {db.describe()}", flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        if seconds is not None:
            loop.call_later(seconds, stopping.set)
        ex = Example(symbols, ib.settings, db, stopping)
        try:
            await pipeline(ex)
        finally:
            for task in ex._on_stop:
                task.cancel()
