"""``mdp import``: bulk-load quote and bar files into PostgreSQL at COPY speed.

Exit status: 0 when every row was stored; 3 when the import finished but some rows were
refused (bad rows, listed and kept in the rejects file; rows the database refused, in the
dead-letter spool): the rest is stored; 1 on an error (a malformed file, refused before
anything is imported; the database unreachable).
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

__all__ = ["import_files"]

_SHOWN_BAD_ROWS = 20
EXIT_REFUSED_ROWS = 3
_AGAIN = "what was committed before stays; running the import again stores only what is missing"


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--mode",
    type=click.Choice(["bars", "quotes"]),
    default=None,
    help="what the files hold (default: told from their columns)",
)
@click.option(
    "--resolution",
    default=None,
    help="resolution of the files' bars, e.g. 1m (default: a resolution column, the file "
    "name, else the data)",
)
@click.option(
    "--symbol", default=None, help="symbol of files without a symbol column (default: file name)"
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "csv", "parquet", "ninjatrader", "polygon", "json"]),
    default="auto",
    show_default=True,
    help="file format (auto: from the file name and first line)",
)
@click.option(
    "--bar-timestamp",
    type=click.Choice(["start", "end"]),
    default=None,
    help="bars are stamped with their start or end time (default: end for NinjaTrader, else start)",
)
@click.option("--source", default="import", show_default=True, help="the rows' source column")
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="connections writing at once",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="where bad rows are written (default: MDP_HOME/rejects/import-<time>.jsonl)",
)
@click.option("--dsn", default=None, help="PostgreSQL DSN (default: MDP_PG_DSN, else embedded)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def import_files(
    paths: tuple[Path, ...],
    mode: str | None,
    resolution: str | None,
    symbol: str | None,
    fmt: str,
    bar_timestamp: str | None,
    source: str,
    workers: int,
    rejects: Path | None,
    dsn: str | None,
    quiet: bool,
) -> None:
    """Import quote or bar files (CSV, Parquet, NinjaTrader, polygon JSON) by COPY.

    Every file's layout is checked before anything is imported. Rows already in the table
    are left as they are, so importing a file again adds nothing. A bad row is reported with
    its file and line and kept in the rejects file; the rest is imported.

    \b
    Examples:
      mdp import data/AAPL_1min_2023-05.csv data/GOOGL_1min_2023-05.csv
      mdp import data/SPY_1min_2011-01.csv --format ninjatrader --symbol SPY
      mdp import data/polygon_AAPL_quotes_page1.json --mode quotes --symbol AAPL
    """
    try:
        import pgpq  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            f"mdp import needs pyarrow and pgpq: pip install 'mdp[import]' ({exc})"
        ) from None
    from mdp_core.dsn import mask_secrets
    from mdp_core.errors import classify_error
    from mdp_core.importing import FileReadError, open_file
    from mdp_core.settings import get_settings

    files = []
    for path in paths:
        try:
            layout = open_file(
                path,
                mode=mode,
                format=fmt,
                symbol=symbol,
                resolution=resolution,
                bar_timestamp=bar_timestamp,
                source=source,
            )
            files.append(layout)
        except (ValueError, OSError) as exc:
            raise click.ClickException(f"{exc} (nothing was imported)") from None
    if rejects is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        rejects = get_settings().home_dir / "rejects" / f"import-{stamp}.jsonl"
    start = time.perf_counter()
    try:
        stats = asyncio.run(_run(files, dsn, workers, rejects, quiet))
    except FileReadError as exc:
        raise click.ClickException(f"{exc} ({_AGAIN})") from None
    except Exception as exc:
        if classify_error(exc) == "fatal":
            raise
        raise click.ClickException(
            f"the database failed: {type(exc).__name__}: {mask_secrets(str(exc))} ({_AGAIN})"
        ) from None
    _report(stats, time.perf_counter() - start)


def _report(stats: Any, elapsed: float) -> None:
    """Print what an import did; exit ``EXIT_REFUSED_ROWS`` if any row was refused."""
    click.echo(
        f"{stats.files} files: {stats.rows:,} rows read, {stats.imported:,} imported "
        f"({stats.new:,} new), {stats.bad:,} bad, {stats.spooled:,} refused by the database "
        f"(dead-letter spool) in {elapsed:.1f}s ({stats.rows / max(elapsed, 1e-9):,.0f} rows/s)"
    )
    for row in stats.bad_rows[:_SHOWN_BAD_ROWS]:
        click.echo(f"bad row: {row}", err=True)
    if stats.bad > _SHOWN_BAD_ROWS:
        click.echo(f"... and {stats.bad - _SHOWN_BAD_ROWS:,} more bad rows", err=True)
    if stats.bad:
        click.echo(f"all {stats.bad:,} bad rows, with their values: {stats.rejects}", err=True)
    if stats.spooled:
        click.echo(f"{stats.spooled:,} rows refused by the database: mdp dlq list", err=True)
    if stats.bad or stats.spooled:
        sys.exit(EXIT_REFUSED_ROWS)


async def _run(files: list[Any], dsn: str | None, workers: int, rejects: Path, quiet: bool) -> Any:
    from mdp_core.importing import Importer
    from mdp_core.store.database import Database

    total = sum(src.path.stat().st_size for src in files)
    bar = click.progressbar(
        length=total, label="importing", file=sys.stderr, show_pos=False, width=30
    )
    async with Database.connect(dsn, max_size=workers + 1) as db:
        importer = Importer(
            db, workers=workers, rejects=rejects, on_progress=None if quiet else bar.update
        )
        try:
            return await importer.run(files)
        finally:
            if not quiet:
                bar.render_finish()
