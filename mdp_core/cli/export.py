"""``mdp export bars|quotes``: write Hive-partitioned Parquet or CSV files, one per UTC day."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mdp_core.cli.read import range_options, symbols_option

__all__ = ["export"]


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="directory to write under (created if missing)",
    )(f)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["parquet", "csv"]),
        default="parquet",
        show_default=True,
        help="file format (keep each format in its own --out directory)",
    )(f)


def _run(table: str, out: Path, fmt: str, call: Callable[..., Any]) -> None:
    """Run an export with a progress bar on stderr, then print its summary."""
    from mdp_core.store.export import ExportedDay

    progress: Any = click.progressbar(
        length=0,
        label=f"exporting {table}",
        file=sys.stderr,
        show_pos=True,
        item_show_func=lambda day: f"{day:%Y-%m-%d}" if day is not None else None,
    )
    with progress as bar:

        def on_day(entry: ExportedDay, done: int, total: int) -> None:
            bar.length = total
            bar.update(1, entry.day)

        try:
            result = call(out=out, format=fmt, on_day=on_day)
        except (ValueError, TypeError) as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(result.summary())


@click.group()
def export() -> None:
    """Write stored bars or quotes to files: DIR/bars/resolution=R/date=D/part-0.parquet."""


@export.command("bars")
@symbols_option
@range_options
@click.option(
    "--resolution", default="1m", show_default=True, help="bar resolution, e.g. 5s, 1m, 1h, 1d"
)
@_common
def bars(
    symbols: list[str] | None, start: str, end: str, resolution: str, out: Path, fmt: str
) -> None:
    """Bars of one resolution in [start, end) to OUT/bars/resolution=R/date=YYYY-MM-DD/.

    Each UTC day is one file, written to a temporary name and renamed: an interrupted
    export leaves no partial file, and exporting a day again replaces its file."""
    from mdp_core.store.export import export_bars

    def call(**kw: Any) -> Any:
        return export_bars(symbols=symbols, start=start, end=end, resolution=resolution, **kw)

    _run(f"{resolution} bars", out, fmt, call)


@export.command("quotes")
@symbols_option
@range_options
@_common
def quotes(symbols: list[str] | None, start: str, end: str, out: Path, fmt: str) -> None:
    """Quotes in [start, end) to OUT/quotes/date=YYYY-MM-DD/ (see `mdp export bars`)."""
    from mdp_core.store.export import export_quotes

    _run(
        "quotes",
        out,
        fmt,
        lambda **kw: export_quotes(symbols=symbols, start=start, end=end, **kw),
    )
