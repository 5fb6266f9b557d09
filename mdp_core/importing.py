"""Bulk import of quote and bar files: read in columns, validate in columns, write by COPY.

The replay provider (``ReplaySource``) works out each file's layout, exactly as for
``mdp stream --provider replay``: format (NinjaTrader, CSV, Parquet, polygon JSON), columns,
symbol, bar resolution and time stamping. The file is then read in Arrow batches (pyarrow),
validated in columns with the models' rules (``mdp_core.columns``) and written by binary
COPY (``mdp_core.store.bulk.BulkWriter``) on ``workers`` connections at once, while the next
batch is read. The rows stored are those the live path would store.

Bad rows: a row the models refuse is judged again by the replay provider's own row parser,
which names the value and what was expected; it is reported with its file and line
(``ImportStats.bad_rows``, the first 100) and written, with its raw values, to the rejects
file (JSON lines): such a row cannot be made into a record, so it cannot go to the
dead-letter spool. A row that makes a valid record but that the database refuses goes to
the dead-letter spool (``BulkWriter``). Nothing is skipped silently; the rest imports.
A row too malformed for Arrow's CSV reader (a wrong number of fields) is judged the same
way and stored if the replay provider takes it.

Once every batch of a run has been written, ``rows == imported + bad + spooled``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mdp_core.columns import Column, Kind, records_table, to_table
from mdp_core.dlq import DeadLetterQueue
from mdp_core.logs import logger
from mdp_core.models import resolution_timedelta
from mdp_core.providers.replay import ReplaySource
from mdp_core.retry import RetryPolicy
from mdp_core.store.bulk import BulkResult, BulkWriter
from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink, QuotesSink

__all__ = ["FORMATS", "BadRow", "FileReadError", "ImportStats", "Importer", "open_file"]

#: ``--format`` values -> the replay provider's formats ("polygon" is its JSON).
FORMATS: dict[str, str] = {
    "auto": "auto",
    "csv": "csv",
    "parquet": "parquet",
    "ninjatrader": "ninjatrader",
    "polygon": "json",
    "json": "json",
}
_KEPT_BAD_ROWS = 100
_CSV_BLOCK = 1 << 20  # bytes of CSV per Arrow batch (about 16,000 bars)


def open_file(
    path: str | Path,
    *,
    mode: str | None = None,
    format: str = "auto",
    symbol: str | None = None,
    resolution: str | None = None,
    bar_timestamp: str | None = None,
    source: str = "import",
) -> ReplaySource:
    """The layout of one file to import, worked out by the replay provider (``resolution``
    is that of the file's bars). Raises ``ValueError`` naming the file and what is wrong
    with it (``FileNotFoundError`` if it does not exist)."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is invalid: expected one of {', '.join(FORMATS)}")
    try:
        return ReplaySource(
            mode=mode,
            path=path,
            format=FORMATS[format],  # type: ignore[arg-type]
            symbol=symbol,
            file_resolution=resolution,
            bar_timestamp=bar_timestamp,  # type: ignore[arg-type]
            source=source,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        name = Path(path).name
        text = str(exc)
        raise ValueError(text if text.startswith(name) else f"{name}: {text}") from None


class FileReadError(ValueError):
    """A file turned out unreadable in the middle (e.g. bytes that are not UTF-8): what
    was read before it may be stored; the message names the file."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row of a file that the models refuse: where it is and why."""

    file: str
    where: str  # "line 17", "row 3" (Parquet) or "results[4]" (JSON)
    reason: str
    values: Sequence[Any]

    def __str__(self) -> str:
        return f"{self.file} {self.where}: {self.reason}"


@dataclass(slots=True)
class ImportStats:
    """Counts of an import: ``rows`` read = ``imported`` (stored; ``new`` of them new rows,
    the rest already in the table) + ``bad`` (refused by the models, in ``rejects``) +
    ``spooled`` (refused by the database, in the dead-letter spool)."""

    files: int = 0
    rows: int = 0
    imported: int = 0
    new: int = 0
    bad: int = 0
    spooled: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)  # the first 100
    rejects: Path | None = None  # the rejects file, when a row was bad
    # tables and rows committed per write path (WritePathCounts.to_dict(), kinds summed)
    write_paths: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.rows == self.imported + self.bad + self.spooled


@dataclass(slots=True)
class _Batch:
    """One batch of a file: its valid rows, and the ordinals (in the file) of the rest."""

    table: pa.Table
    rows: int
    refused: list[int]
    size: int  # bytes of the file it stands for, roughly (progress)
    encoded: bytes | None = None  # the table as COPY data


# (writer, valid rows, their COPY data if made, bytes of the file they stand for)
_Job = tuple[BulkWriter, pa.Table, bytes | None, int]


class Importer:
    """Imports files into ``db``; see the module docstring.

    ``workers`` connections write at once; ``rejects`` is the file bad rows are written to
    (created at the first one); ``on_progress(bytes)`` is called as batches are stored."""

    def __init__(
        self,
        db: Database,
        *,
        workers: int = 2,
        rejects: Path,
        dlq: DeadLetterQueue | None = None,
        retry_policy: RetryPolicy | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers {workers!r} is invalid: expected >= 1")
        self.db = db
        self.workers = workers
        self.rejects = rejects
        self.dlq = dlq or DeadLetterQueue()
        self.retry_policy = retry_policy
        self.on_progress = on_progress or (lambda _: None)
        self.stats = ImportStats()
        self._rejects_file: Any = None

    async def run(self, files: Sequence[ReplaySource]) -> ImportStats:
        """Import ``files`` in order; return the counts. Raises on an error that is not one
        bad row (the database unreachable past the retry policy, an unreadable file); what
        was committed before it stays, and importing again adds only what is missing."""
        writers = {
            kind: BulkWriter(self.db, kind, dlq=self.dlq, retry_policy=self.retry_policy)
            for kind in {src.mode for src in files}
        }
        queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=self.workers)
        try:
            async with asyncio.TaskGroup() as tasks:
                for _ in range(self.workers):
                    tasks.create_task(self._write(queue))
                for src in files:
                    await self._read(src, writers[src.mode], queue)
                    self.stats.files += 1
                for _ in range(self.workers):
                    await queue.put(None)
        except BaseExceptionGroup as group:
            raise _first(group) from None
        finally:
            self._close_rejects()
            for writer in writers.values():
                for path, n in writer.paths.to_dict().items():
                    self.stats.write_paths[path] = self.stats.write_paths.get(path, 0) + n
        return self.stats

    async def _write(self, queue: asyncio.Queue[_Job | None]) -> None:
        while (job := await queue.get()) is not None:
            writer, table, encoded, size = job
            result: BulkResult = await writer.write(table, encoded)
            self.stats.imported += result.stored
            self.stats.new += result.new
            self.stats.spooled += result.spooled
            self.on_progress(size)

    async def _read(
        self,
        src: ReplaySource,
        writer: BulkWriter,
        queue: asyncio.Queue[_Job | None],
    ) -> None:
        """Read, validate and queue one file; then judge the rows refused in columns."""
        invalid: set[str] = set()  # rows Arrow could not split into the file's columns
        refused: list[int] = []
        batches = _batches(src, invalid)
        done = 0
        while (batch := await asyncio.to_thread(_next, src, batches, writer)) is not None:
            self.stats.rows += batch.rows
            refused.extend(batch.refused)
            done += batch.size
            await queue.put((writer, batch.table, batch.encoded, batch.size))
        rest = max(0, src.path.stat().st_size - done)
        if refused or invalid:
            records, bad = await asyncio.to_thread(_judge, src, set(refused), invalid)
            self.stats.rows += len(invalid)
            for row in bad:
                self._bad(row)
            if records:
                rows = _SINKS[src.mode].rows(records)
                await queue.put((writer, records_table(src.mode, rows), None, rest))
                return
        self.on_progress(rest)

    def _bad(self, row: BadRow) -> None:
        stats = self.stats
        stats.bad += 1
        if len(stats.bad_rows) < _KEPT_BAD_ROWS:
            stats.bad_rows.append(row)
            logger.debug("import: {} (row refused; see {})", row, self.rejects)
        if self._rejects_file is None:
            self.rejects.parent.mkdir(parents=True, exist_ok=True)
            self._rejects_file = self.rejects.open("a", encoding="utf-8")
            stats.rejects = self.rejects
        line = {
            "file": row.file,
            "where": row.where,
            "reason": row.reason,
            "values": list(row.values),
            "at": datetime.now(UTC).isoformat(),
        }
        self._rejects_file.write(json.dumps(line, default=str) + "\n")

    def _close_rejects(self) -> None:
        if self._rejects_file is not None:
            self._rejects_file.flush()
            os.fsync(self._rejects_file.fileno())
            self._rejects_file.close()
            self._rejects_file = None


_SINKS: dict[str, type[BarsSink] | type[QuotesSink]] = {"bars": BarsSink, "quotes": QuotesSink}


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error of a task group (its tasks fail one at a time: the first is the cause)."""
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


# -- reading in columns ---------------------------------------------------------------------


def _next(src: ReplaySource, batches: Iterator[_Batch], writer: BulkWriter) -> _Batch | None:
    """The next batch, encoded for COPY, or None at the end (run in a thread, so reading
    and encoding overlap the writes); a file Arrow cannot read raises ``FileReadError``."""
    try:
        batch = next(batches, None)
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise FileReadError(f"{src.path.name} cannot be read: {exc}") from None
    if batch is not None:
        batch.encoded = writer.encode(batch.table)
    return batch


def _batches(src: ReplaySource, invalid: set[str]) -> Iterator[_Batch]:
    """The file's batches, validated; ``invalid`` collects the rows Arrow could not read."""
    if src.format in ("csv", "ninjatrader"):
        raw = _csv_batches(src, invalid)
    elif src.format == "parquet":
        raw = _parquet_batches(src)
    else:
        raw = _json_batches(src, invalid)
    ordinal = 0
    kind: Kind = "bars" if src.mode == "bars" else "quotes"
    end_stamped = src.mode == "bars" and src.bar_timestamp == "end"
    shift = resolution_timedelta(src.resolution or "") if end_stamped else None
    for columns, n, size in raw:
        table, refused = to_table(
            kind,
            columns,
            n,
            symbol=src.file_symbol,
            resolution=src.resolution,
            source=src.source,
            read_time=src.read_time,
            nt_times=src.format == "ninjatrader",
            shift=shift,
        )
        if src.format == "json":  # replayed in time order, as the replay provider does
            table = table.take(pc.sort_indices(table, [("ts", "ascending")]))
        where = pc.indices_nonzero(refused).to_pylist()
        yield _Batch(table, n, [ordinal + i for i in where], size)
        ordinal += n


_Raw = Iterator[tuple[dict[str, Column], int, int]]


def _csv_batches(src: ReplaySource, invalid: set[str]) -> _Raw:
    import pyarrow.csv as pv

    names = [f"c{i}" for i in range(len(src.header))]
    fields = {field: names[i] for field, i in src.columns.items()}
    skip = 0 if src.format == "ninjatrader" else _header_lines(src.path)

    def on_invalid(row: Any) -> str:
        invalid.add(f"line {row.number + skip}")
        return "skip"

    reader = pv.open_csv(
        src.path,
        read_options=pv.ReadOptions(
            column_names=names, skip_rows=skip, use_threads=False, block_size=_CSV_BLOCK
        ),
        parse_options=pv.ParseOptions(delimiter=src.delimiter, invalid_row_handler=on_invalid),
        convert_options=pv.ConvertOptions(
            include_columns=sorted(set(fields.values())),
            column_types=dict.fromkeys(names, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
        ),
    )
    for batch in reader:
        n = batch.num_rows
        size = n * len(names)  # the delimiters and the line end, plus the text read:
        size += sum(pc.sum(pc.utf8_length(c)).as_py() or 0 for c in batch.columns)
        yield {field: batch.column(name) for field, name in fields.items()}, n, size


def _header_lines(path: Path) -> int:
    """The lines up to and including the header (the first that is not blank)."""
    with path.open(encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                return number
    return 0


def _parquet_batches(src: ReplaySource) -> _Raw:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src.path)
    names = {field: src.header[i] for field, i in src.columns.items()}
    total = max(1, pf.metadata.num_rows)
    size = src.path.stat().st_size
    for batch in pf.iter_batches(batch_size=65_536, columns=sorted(set(names.values()))):
        n = batch.num_rows
        yield {f: batch.column(name) for f, name in names.items()}, n, size * n // total


def _json_batches(src: ReplaySource, invalid: set[str]) -> _Raw:
    """The whole JSON file as one batch (the replay provider reads it whole too)."""
    width = len(src.header)
    rows = []
    for where, values in src.rows():
        if len(values) == width:
            rows.append(values)
        else:
            invalid.add(where)  # not an object
    columns: dict[str, Column] = {}
    for field_name, i in src.columns.items():
        values = [row[i] for row in rows]
        columns[field_name] = values  # mixed types (True, 1.5, "x"): read value by value
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) == 1 and kinds <= {int, float, str}:  # one type: Arrow keeps it
            try:
                columns[field_name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                pass
    yield columns, len(rows), src.path.stat().st_size


# -- judging refused rows --------------------------------------------------------------------


def _judge(
    src: ReplaySource, refused: set[int], invalid: set[str]
) -> tuple[list[Any], list[BadRow]]:
    """Each refused row (by ordinal) and each row Arrow could not read (by where), judged
    by the replay provider's row parser: the records it makes after all, and the bad rows
    with its reasons."""
    records: list[Any] = []
    bad: list[BadRow] = []
    ordinal = 0
    for where, values in src.rows():
        if where in invalid:
            pass
        elif ordinal in refused:
            ordinal += 1
        else:
            ordinal += 1
            continue
        try:
            records.append(src.parse_row(values))
        except (ValueError, TypeError, OverflowError) as exc:
            bad.append(BadRow(src.path.name, where, str(exc), list(values)))
            continue
        if where not in invalid:  # the columns refused a row the models take
            logger.warning(
                "import: {} {}: refused in columns but valid for the models; stored",
                src.path.name, where,
            )  # fmt: skip
    return records, bad
