"""``mdp read bars|quotes``: print stored bars or quotes as a table (or CSV)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

__all__ = ["range_options", "read", "symbols_option"]


def _split_symbols(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[str] | None:
    """``--symbols AAPL,MSFT --symbols SPY`` -> ``["AAPL", "MSFT", "SPY"]``; none -> all."""
    symbols = [s.strip() for chunk in value for s in chunk.split(",") if s.strip()]
    return symbols or None


def symbols_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--symbols",
        multiple=True,
        callback=_split_symbols,
        help="comma-separated symbols (repeatable); default: every symbol",
    )(f)


def range_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--end",
        required=True,
        help="end of the range, excluded: ISO 8601 with an offset, e.g. 2024-01-03T00:00Z",
    )(f)
    return click.option(
        "--start",
        required=True,
        help="start of the range, included: ISO 8601 with an offset, e.g. 2024-01-02T00:00Z",
    )(f)


def _limit_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=100,
        show_default=True,
        help="print at most this many rows (the first, by symbol then time)",
    )(f)


def _format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv"]),
        default="table",
        show_default=True,
        help="a table for people, or CSV for other programs",
    )(f)


def _show(frame: Any, limit: int, fmt: str, what: str) -> None:
    """Print up to ``limit`` rows of ``frame`` (which holds up to ``limit + 1``)."""
    more = len(frame) > limit
    frame = frame.head(limit)
    if fmt == "csv":
        frame.to_csv(sys.stdout, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    elif len(frame) == 0:
        click.echo(f"no {what} in that range")
    else:
        click.echo(frame.to_string(index=False, na_rep="-"))
    if more:
        click.echo(
            f"(first {limit} rows shown: more match; raise --limit, or write them all to "
            "files with `mdp export`)",
            err=True,
        )


@click.group()
def read() -> None:
    """Print stored bars or quotes (see also `mdp export`, and read_bars in Python)."""


@read.command("bars")
@symbols_option
@range_options
@click.option(
    "--resolution", default="1m", show_default=True, help="bar resolution, e.g. 5s, 1m, 1h, 1d"
)
@_limit_option
@_format_option
def bars(
    symbols: list[str] | None, start: str, end: str, resolution: str, limit: int, fmt: str
) -> None:
    """Bars of one resolution in [start, end), sorted by symbol then time."""
    from mdp_core.store.read import read_bars

    try:
        frame = read_bars(symbols, start, end, resolution, limit=limit + 1)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    _show(frame, limit, fmt, f"{resolution} bars")


@read.command("quotes")
@symbols_option
@range_options
@_limit_option
@_format_option
def quotes(symbols: list[str] | None, start: str, end: str, limit: int, fmt: str) -> None:
    """Quotes in [start, end), sorted by symbol then time."""
    from mdp_core.store.read import read_quotes

    try:
        frame = read_quotes(symbols, start, end, limit=limit + 1)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    _show(frame, limit, fmt, "quotes")
