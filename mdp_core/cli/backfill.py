"""``mdp backfill``: fill mdp.bars with IB's history for a date range, following IB's pacing
rules, with a progress bar on stderr and a per-symbol summary on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click

__all__ = ["backfill", "parse_when"]


def parse_when(value: str, name: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO date and time (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected a date YYYY-MM-DD or a date and time like 2024-01-02T14:30",
            param_hint=name,
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class _Progress:
    """A progress bar on a terminal; otherwise a line at most every ``every`` seconds."""

    def __init__(self, stream: TextIO, quiet: bool, every: float = 0.5) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.quiet = quiet
        self.every = every
        self._last = 0.0

    def __call__(self, p: Any) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        final = p.done == p.planned
        if not self.live and not final and now - self._last < self.every and p.done > 1:
            return
        self._last = now
        width = 30
        filled = width * p.done // max(p.planned, 1)
        bar = "#" * filled + "." * (width - filled)
        line = f"backfill [{bar}] {p.done}/{p.planned} requests, {p.received:,} bars"
        if self.live:
            self.stream.write(f"\r{line}" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _summary(result: Any) -> str:
    rows: list[tuple[str, ...]] = [
        ("symbol", "planned", "requested", "received", "committed", "empty", "failed")
    ]
    totals = [0] * 6
    for r in result.symbols.values():
        values = [r.planned, r.requested, r.received, r.committed, r.empty, r.failed]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        rows.append((r.symbol + (" (unknown to IB)" if r.unknown else ""), *map(_n, values)))
    rows.append(("total", *map(_n, totals)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    h = result.coordinator
    if not result.planned and not any(r.unknown for r in result.symbols.values()):
        lines.append("nothing to fetch: mdp.bars (or an earlier backfill) covers the range")
    lines.append(
        f"{result.resolution} bars of [{result.start.isoformat()}, {result.end.isoformat()}): "
        f"waited {result.waited:,.1f}s for IB's pacing, {result.pacing_violations} pacing "
        f"violation(s), dead-lettered {h.dead_lettered if h else 0}, "
        f"{result.elapsed:,.1f}s in all"
        + ("" if result.balanced else "  [ACCOUNTING DOES NOT BALANCE]")
    )
    return "\n".join(lines)


def _n(value: int) -> str:
    return f"{value:,}"


@click.command("backfill")
@click.option("--provider", default="ibkr", show_default=True, help="history provider (ibkr)")
@click.option(
    "--symbols",
    required=True,
    help="comma-separated instrument ids: AAPL, EUR:CASH:IDEALPRO:USD, ES:FUT:CME:USD:202503, "
    "ES:CONTFUT:CME, SPX:IND:CBOE",
)
@click.option("--start", "start_text", required=True, help="first day (YYYY-MM-DD, UTC)")
@click.option("--end", "end_text", required=True, help="end, exclusive (YYYY-MM-DD, UTC)")
@click.option(
    "--resolution",
    default="1m",
    show_default=True,
    help="bar size: 5s 10s 15s 30s 1m 5m 15m 30m 1h 1d",
)
@click.option("--all-hours", is_flag=True, help="all hours, not only regular trading hours")
@click.option(
    "--what-to-show",
    type=click.Choice(["TRADES", "MIDPOINT", "BID", "ASK"], case_sensitive=False),
    default="TRADES",
    show_default=True,
    help="IB's whatToShow (FX always gets MIDPOINT for TRADES: IB has no FX trades)",
)
@click.option(
    "--calendar",
    default=None,
    help="exchange_calendars name for every symbol's regular hours (default: per exchange)",
)
@click.option("--client-id", type=int, default=None, help="IB API client id (MDP_IBKR_CLIENT_ID)")
@click.option("--concurrency", type=click.IntRange(1, 50), default=4, show_default=True)
@click.option("--timeout", type=float, default=60.0, show_default=True, help="seconds per request")
@click.option(
    "--pacing-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="multiply IB's pacing windows (only against `mdp gateway --history-pacing-scale`)",
)
@click.option("--dsn", default=None, help="PostgreSQL DSN (default: MDP_PG_DSN, else embedded)")
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the per-symbol summary as JSON to this file",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def backfill(
    provider: str,
    symbols: str,
    start_text: str,
    end_text: str,
    resolution: str,
    all_hours: bool,
    what_to_show: str,
    calendar: str | None,
    client_id: int | None,
    concurrency: int,
    timeout: float,
    pacing_scale: float,
    dsn: str | None,
    summary_json: Path | None,
    quiet: bool,
) -> None:
    """Fill mdp.bars with historical bars from IB for [START, END), asking only for what the
    table does not hold yet (a second run asks nothing; a killed run resumes), at IB's pace.

    \b
    Examples:
      mdp backfill --symbols AAPL,MSFT --start 2024-01-02 --end 2024-02-01 --resolution 1m
      mdp backfill --symbols EUR:CASH:IDEALPRO:USD,ES:CONTFUT:CME --start 2024-01-02 \\
                   --end 2024-01-09 --resolution 5m --all-hours
    """
    from mdp_core.backfill import Backfill
    from mdp_core.providers.ibkr.pacing import PacingRules
    from mdp_core.settings import IBKRSettings

    if provider != "ibkr":
        raise click.UsageError(f"--provider {provider!r}: only 'ibkr' serves history")
    start, end = parse_when(start_text, "--start"), parse_when(end_text, "--end")
    overrides: dict[str, Any] = {} if client_id is None else {"client_id": client_id}
    progress = _Progress(sys.stderr, quiet)
    try:
        job = Backfill(
            None,  # type: ignore[arg-type]  # set once the database is open
            symbols, start, end, resolution, rth=not all_hours, what_to_show=what_to_show.upper(),
            calendar=calendar, ibkr_settings=IBKRSettings(**overrides),
            pacing=PacingRules().scaled(pacing_scale), concurrency=concurrency,
            request_timeout=timeout, on_progress=progress,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    result = asyncio.run(_run(job, dsn))
    click.echo(_summary(result))
    if summary_json is not None:
        summary_json.write_text(json.dumps(_as_json(result), indent=2))
    if not result.balanced:
        sys.exit(3)
    if result.failed:
        sys.exit(1)


async def _run(job: Any, dsn: str | None) -> Any:
    from mdp_core.store.database import Database

    async with Database.connect(dsn) as db:
        job.db = db
        return await job.run()


def _as_json(result: Any) -> dict[str, Any]:
    h = result.coordinator
    return {
        "resolution": result.resolution,
        "start": result.start.isoformat(),
        "end": result.end.isoformat(),
        "planned": result.planned,
        "received": result.received,
        "pacing_violations": result.pacing_violations,
        "waited_s": round(result.waited, 3),
        "elapsed_s": round(result.elapsed, 3),
        "committed": h.committed if h else 0,
        "dead_lettered": h.dead_lettered if h else 0,
        "balanced": result.balanced,
        "symbols": {s: asdict(r) for s, r in result.symbols.items()},
    }
