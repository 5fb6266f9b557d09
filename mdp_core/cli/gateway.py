"""``mdp gateway``: run the simulated IB Gateway until Ctrl-C, controlled from stdin."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import click

from mdp_core.calendars import get_calendar
from mdp_core.gateway.market import replay_symbol
from mdp_core.gateway.server import CONTROL_HELP, SimulatedGateway
from mdp_core.logs import configure_logging
from mdp_core.providers.ibkr.pacing import PacingRules

__all__ = ["gateway"]

_EPILOG = f"""\b
Control commands (type them on stdin while it runs):
{CONTROL_HELP}
  quit                   stop the gateway (Ctrl-C and SIGTERM do too)

\b
Examples:
  mdp gateway --symbols AAPL,MSFT --time-compression 60
  mdp gateway --port 4002 --replay data/SPY_1min_2011-01.csv \\
              --replay AAPL=data/AAPL_1min_2023-05.csv
"""


def _replay_specs(values: tuple[str, ...]) -> dict[str, Path]:
    """``PATH`` or ``SYMBOL=PATH`` values as ``{symbol: path}``."""
    specs: dict[str, Path] = {}
    for value in values:
        symbol, sep, path_text = value.rpartition("=")
        path = Path(path_text if sep else value)
        if not path.is_file():
            raise click.BadParameter(
                f"{value!r}: file {path} not found; expected PATH or SYMBOL=PATH",
                param_hint="--replay",
            )
        specs[symbol.strip().upper() if sep else replay_symbol(path)] = path
    return specs


def _trades_range(value: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected two integers LOW,HIGH (e.g. 1,8)", param_hint="--trades-per-bar"
        ) from None
    return low, high


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Forward stdin lines to ``queue`` from a daemon thread (None at end of input)."""

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="gateway-stdin", daemon=True).start()


async def _serve(gw: SimulatedGateway) -> None:
    try:
        await gw.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {gw.host}:{gw.port}: {exc}") from None
    loop = asyncio.get_running_loop()
    # Build the instruments' exchange calendars (about a second each) before the first
    # historical request with useRTH needs them.
    calendars = {gw.instrument(s).spec.calendar for s in gw.symbols}
    warming = asyncio.gather(*(asyncio.to_thread(get_calendar, c) for c in calendars))
    commands: asyncio.Queue[str | None] = asyncio.Queue()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, commands.put_nowait, "quit")
    _stdin_lines(loop, commands)
    click.echo(
        f"simulated IB Gateway on {gw.host}:{gw.port} (symbols {', '.join(gw.symbols)}); "
        "type 'help' for commands, Ctrl-C to stop",
        err=True,
    )
    try:
        while True:
            line = await commands.get()
            if line is None:
                continue  # stdin closed (e.g. run in the background): keep serving
            command = line.strip()
            if command.lower() in ("quit", "exit"):
                break
            try:
                reply = await gw.control(command)
            except ValueError as exc:
                click.echo(str(exc), err=True)
                continue
            if reply:
                click.echo(reply)
    finally:
        await asyncio.gather(warming, return_exceptions=True)
        await gw.stop()
        click.echo(f"gateway stopped; totals {gw.stats()['totals']}", err=True)


@click.command("gateway", epilog=_EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=4002, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--symbols",
    default="AAPL,MSFT",
    show_default=True,
    help="Random-walk instruments, comma-separated ids: AAPL, EUR:CASH:IDEALPRO:USD, "
    "ES:FUT:CME:USD:202503, ES:CONTFUT:CME, SPX:IND:CBOE.",
)
@click.option("--seed", default=1, show_default=True, type=int, help="Seed of the market models.")
@click.option(
    "--time-compression",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Simulated seconds per real second (60: a minute per second).",
)
@click.option(
    "--replay",
    multiple=True,
    metavar="[SYMBOL=]PATH",
    help="1-minute bar file to replay (repeatable); symbol defaults to the file name prefix.",
)
@click.option("--delayed-symbols", default="", help="Symbols served as delayed data (10167).")
@click.option(
    "--account", "accounts", multiple=True, default=("DU1234567",), show_default=True,
    help="Managed account (repeatable).",
)  # fmt: skip
@click.option(
    "--max-lines", default=100, show_default=True, type=click.IntRange(min=1),
    help="Market-data lines per connection (error 101 past it).",
)  # fmt: skip
@click.option(
    "--tick-interval", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True),
    help="Real seconds between data pumps.",
)  # fmt: skip
@click.option(
    "--trades-per-bar", default="1,8", show_default=True, help="LOW,HIGH trades per 5s bar."
)
@click.option("--pacing-limit", type=int, default=None, help="Requests/s before error 100.")
@click.option(
    "--history-pacing-scale", default=1.0, show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Multiply the windows of IB's historical pacing rules (error 162) by this.",
)  # fmt: skip
@click.option(
    "--no-history-pacing", is_flag=True, help="Do not enforce IB's historical pacing rules."
)
@click.option(
    "--start",
    "start",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]),
    default=None,
    help="Simulated start time, UTC (default: now). Inside a replay file's span the file "
    "plays at its own times.",
)
@click.option("--log-level", default=None, help="Log level (default MDP_LOG_LEVEL or INFO).")
def gateway(
    host: str,
    port: int,
    symbols: str,
    seed: int,
    time_compression: float,
    replay: tuple[str, ...],
    delayed_symbols: str,
    accounts: tuple[str, ...],
    max_lines: int,
    tick_interval: float,
    trades_per_bar: str,
    pacing_limit: int | None,
    history_pacing_scale: float,
    no_history_pacing: bool,
    start: datetime | None,
    log_level: str | None,
) -> None:
    """Run a simulated IB Gateway (TWS API, server version 178) for ib_async clients.

    Ticks, 5-second real-time bars and historical bars come from seeded random walks or
    replayed minute bars on a simulated clock. Logs connections and faults.
    """
    configure_logging(level=log_level)
    try:
        gw = SimulatedGateway(
            symbols=[s for s in symbols.split(",") if s.strip()],  # instrument ids
            host=host,
            port=port,
            seed=seed,
            time_compression=time_compression,
            start=start.replace(tzinfo=UTC) if start else None,
            replay=_replay_specs(replay),
            delayed_symbols=[s for s in delayed_symbols.split(",") if s.strip()],
            accounts=accounts,
            max_lines=max_lines,
            tick_interval=tick_interval,
            trades_per_bar=_trades_range(trades_per_bar),
            pacing_limit=pacing_limit,
            history_pacing=None if no_history_pacing else PacingRules(),
            history_pacing_scale=history_pacing_scale,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        asyncio.run(_serve(gw))
    except KeyboardInterrupt:
        pass
