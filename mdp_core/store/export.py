"""Export bars and quotes to Hive-partitioned Parquet (or CSV) files, one file per UTC day.

Layout under ``out``::

    bars/resolution=<r>/date=YYYY-MM-DD/part-0.parquet
    quotes/date=YYYY-MM-DD/part-0.parquet

(``part-0.csv`` for CSV). The partition values are in the path only (``resolution`` and
``date`` are not columns of the files, as Hive layouts expect: ``pyarrow.dataset``, DuckDB,
Spark and Polars add them back from the path); a file holds the columns of ``read_bars`` /
``read_quotes`` otherwise, sorted by symbol then ts, with ``ts`` as ``timestamp[us, UTC]``.

Guarantees:
- each day is read with one query (``ArrowReader``: binary COPY into Arrow) and written to
  a temporary name in its own directory (``.part-0.parquet.<host>.<pid>.tmp``, hidden from
  dataset readers), fsynced, then renamed over ``part-0.parquet`` and the directory
  fsynced: a reader sees the old file or the new one, never half of one, and a crash leaves
  at most a hidden temporary file, which the next export into that directory removes (only
  when the process that wrote it is gone);
- re-exporting a day replaces its file exactly with what the database holds for the
  requested symbols and range now; a day without rows writes no file and leaves an existing
  file of that day alone (an archive outlives the database's retention);
- the range's first and last days hold only the part of the day inside ``[start, end)``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mdp_core.dlq.files import fsync_dir
from mdp_core.store.read import (
    ArrowReader,
    ReadRequest,
    UnknownResolutionError,
    bars_request,
    quotes_request,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "FORMATS",
    "DayCallback",
    "ExportResult",
    "ExportedDay",
    "export_bars",
    "export_days",
    "export_quotes",
    "partition_dir",
    "write_atomically",
]

Format = Literal["parquet", "csv"]
#: Called after each day: (that day, days done, days in the range). A progress bar.
DayCallback = Callable[["ExportedDay", int, int], None]
#: Supported file formats (the file suffix is the format's name).
FORMATS: tuple[str, ...] = ("parquet", "csv")
PART = "part-0"
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ExportedDay:
    """One UTC day of an export: ``path`` is ``None`` when the day had no rows (no file)."""

    day: date
    rows: int
    path: Path | None
    bytes: int


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote: one entry per UTC day of the range, oldest first."""

    table: str
    resolution: str | None
    format: str
    root: Path  # the table's directory: <out>/bars/resolution=<r> or <out>/quotes
    days: tuple[ExportedDay, ...] = field(default_factory=tuple)

    @property
    def files(self) -> list[Path]:
        return [d.path for d in self.days if d.path is not None]

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.days)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.days)

    @property
    def empty_days(self) -> list[date]:
        return [d.day for d in self.days if d.path is None]

    def summary(self) -> str:
        """One line for people: files, rows, size, where, and the days without rows."""
        empty = self.empty_days
        tail = f"; {len(empty)} day(s) without rows (no file)" if empty else ""
        return (
            f"wrote {len(self.files)} {self.format} file(s), {self.rows:,} rows "
            f"({self.bytes / 2**20:,.1f} MiB) under {self.root}{tail}"
        )


def partition_dir(out: str | Path, table: str, resolution: str | None, day: date) -> Path:
    """The Hive partition directory of ``day``: ``<out>/bars/resolution=<r>/date=<day>`` or
    ``<out>/quotes/date=<day>``."""
    root = Path(out) / table
    if resolution is not None:
        root = root / f"resolution={resolution}"
    return root / f"date={day:%Y-%m-%d}"


def _days(start: datetime, end: datetime) -> Iterator[tuple[date, datetime, datetime]]:
    """Each UTC day overlapping ``[start, end)`` with the part of it inside the range."""
    day = start.date()
    while True:
        lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if lo >= end:
            return
        yield day, max(lo, start), min(lo + _DAY, end)
        day += _DAY


# -- writing one file -----------------------------------------------------------------------


def _temp_prefix(final: Path) -> str:
    return f".{final.name}."


def _temp_name(final: Path) -> Path:
    return final.with_name(f"{_temp_prefix(final)}{socket.gethostname()}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(final: Path) -> None:
    """Remove temporary files of ``final`` left by crashed exports of this host."""
    host = socket.gethostname()
    for temp in final.parent.glob(f"{_temp_prefix(final)}*.tmp"):
        parts = temp.name[len(_temp_prefix(final)) :].removesuffix(".tmp").rsplit(".", 1)
        if len(parts) != 2 or parts[0] != host or not parts[1].isdigit():
            continue  # another host's, or not ours: leave it
        pid = int(parts[1])
        if pid != os.getpid() and not _alive(pid):
            temp.unlink(missing_ok=True)


def _write(table: pa.Table, fmt: Format, handle: object) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, handle)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, handle)


def write_atomically(table: pa.Table, final: Path, fmt: Format) -> int:
    """Write ``table`` to ``final`` through a temporary file in the same directory, fsync it,
    rename it over ``final`` and fsync the directory; return the file's size. On any error
    the temporary file is removed and ``final`` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    temp = _temp_name(final)
    try:
        with open(temp, "wb") as handle:
            _write(table, fmt, handle)
            handle.flush()
            os.fsync(handle.fileno())
        size = temp.stat().st_size
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(final.parent)
    return size


# -- exporting a range ------------------------------------------------------------------------


def _check_format(fmt: object) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is invalid: expected one of {', '.join(FORMATS)}")


def export_days(
    reader: ArrowReader,
    request: ReadRequest,
    out: str | Path,
    *,
    fmt: Format = "parquet",
    on_day: DayCallback | None = None,
) -> ExportResult:
    """Export ``request`` (validated; its ``limit`` is ignored) day by day with ``reader``
    (see the module's guarantees); ``on_day`` is called after each day (``DayCallback``)."""
    _check_format(fmt)
    out = Path(out).expanduser().resolve()
    exported: list[ExportedDay] = []
    whole = replace(request, limit=None)
    days = list(_days(request.start, request.end))
    for day, lo, hi in days:
        table = reader.read(whole.within(lo, hi))
        if request.table == "bars":
            table = table.drop_columns(["resolution"])  # it is in the path
        if table.num_rows == 0:
            entry = ExportedDay(day, 0, None, 0)
        else:
            final = partition_dir(out, request.table, request.resolution, day) / f"{PART}.{fmt}"
            size = write_atomically(table, final, fmt)
            entry = ExportedDay(day, table.num_rows, final, size)
        exported.append(entry)
        if on_day is not None:
            on_day(entry, len(exported), len(days))
    root = out / request.table
    if request.resolution is not None:
        root = root / f"resolution={request.resolution}"
    return ExportResult(request.table, request.resolution, fmt, root, tuple(exported))


def _export(
    request: ReadRequest | UnknownResolutionError,
    out: str | Path,
    fmt: Format,
    dsn: str | None,
    on_day: DayCallback | None,
) -> ExportResult:
    _check_format(fmt)
    with ArrowReader(dsn) as reader:
        if isinstance(request, UnknownResolutionError):
            raise UnknownResolutionError(request.value, reader.resolutions_present())
        return export_days(reader, request, out, fmt=fmt, on_day=on_day)


def export_bars(
    out: str | Path,
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str = "1m",
    *,
    format: Format = "parquet",
    dsn: str | None = None,
    on_day: DayCallback | None = None,
) -> ExportResult:
    """Export the ``resolution`` bars of ``symbols`` (one, a list, ``None`` = all) in
    ``[start, end)`` under ``out`` (see the module's guarantees). Bad input raises
    ``ValueError`` as ``read_bars`` does. Synchronous: call it from a thread in async code."""
    try:
        request: ReadRequest | UnknownResolutionError = bars_request(
            symbols, start, end, resolution
        )
    except UnknownResolutionError as exc:
        request = exc
    return _export(request, out, format, dsn, on_day)


def export_quotes(
    out: str | Path,
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    *,
    format: Format = "parquet",
    dsn: str | None = None,
    on_day: DayCallback | None = None,
) -> ExportResult:
    """Export the quotes of ``symbols`` in ``[start, end)`` under ``out`` (see
    ``export_bars``)."""
    return _export(quotes_request(symbols, start, end), out, format, dsn, on_day)
