"""Sinks: write batches of Quote / Bar records to ``mdp.quotes`` / ``mdp.bars``.

A batch is written one of two ways (``mdp_core.store.write_path``), each one transaction on
a pooled connection:

- fast: binary COPY straight into ``mdp.<table>``. When a key of the batch is stored already
  (or the batch holds a key twice) PostgreSQL refuses the COPY with a unique violation
  (SQLSTATE 23505), the transaction rolls back, and the same batch is written the idempotent
  way in a new transaction (a fallback);
- idempotent: binary COPY into the connection's TEMP staging table, then
  ``INSERT INTO mdp.<table> SELECT ... FROM stage ON CONFLICT DO NOTHING`` (and the replace
  of ``partial`` bars).

A ``WritePathPolicy`` picks the way per batch: after a conflict the sink stays on the
idempotent path for a while. ``paths`` counts the committed batches and rows of each way.

Guarantees (G1, effectively once, with the coordinator's at-least-once retries):
- a batch is committed entirely or not at all: when ``write`` raises, none of its rows is
  in the table; a row counts as stored only once ``write`` has returned;
- writes are idempotent on the natural key, ``(symbol, ts)`` for quotes and
  ``(symbol, resolution, ts)`` for bars: writing a batch again, or a batch holding the same
  key twice, adds no duplicate. The first stored row of a key wins, with one exception: a
  bar stored ``partial`` (its stream stopped mid-window) is replaced by the first complete
  bar written for its key. ``write`` returns the rows inserted plus the partial rows replaced;
- errors propagate unchanged as asyncpg exceptions (e.g. ``CheckViolationError``,
  SQLSTATE 23514, when a row breaks a CHECK constraint; ``PostgresConnectionError`` or
  ``OSError`` when the database is unreachable), so the coordinator can classify them by
  class and SQLSTATE; a value asyncpg cannot encode (e.g. a str where a float goes) raises
  asyncpg's client-side ``DataError`` (``asyncpg.exceptions._base.DataError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from operator import attrgetter
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

from mdp_core.models import Bar, Quote
from mdp_core.store.database import STAGE_TABLES
from mdp_core.store.write_path import WritePathCounts, WritePathPolicy, write_by_policy

if TYPE_CHECKING:
    from mdp_core.store.database import Database

__all__ = ["BarsSink", "QuotesSink", "TableSink"]

R = TypeVar("R", Quote, Bar)

_ts = attrgetter("ts")


class TableSink(Generic[R]):
    """Writes batches of one record type to one partitioned table (see the module's
    guarantees). Use as ``async with QuotesSink(db) as sink: await sink.write(batch)``.

    ``policy`` picks the write path of each batch (default: a ``WritePathPolicy()`` that
    tries the fast path first; pass ``WritePathPolicy(start_idempotent=True)`` for rows
    that are likely stored already, as DLQ replay and backfills do)."""

    kind: ClassVar[str]
    table: ClassVar[str]
    record_type: ClassVar[type]
    columns: ClassVar[tuple[str, ...]]
    # record -> tuple in ``columns`` order; operator.attrgetter runs in C (the hot path)
    _to_row: ClassVar[attrgetter[tuple[Any, ...]]]
    _insert_sql: ClassVar[str]
    _replace_sql: ClassVar[str | None] = None  # run when the INSERT met conflicts

    def __init__(self, db: Database, policy: WritePathPolicy | None = None) -> None:
        self.db = db
        self.policy = policy if policy is not None else WritePathPolicy()
        self.paths = WritePathCounts()
        self._stage = STAGE_TABLES[self.table]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None  # the pool belongs to the Database

    @classmethod
    def rows(cls, batch: Sequence[R]) -> list[tuple[Any, ...]]:
        """The batch as tuples in ``columns`` order (what COPY sends)."""
        try:
            return list(map(cls._to_row, batch))
        except AttributeError:
            wrong = next(r for r in batch if not isinstance(r, cls.record_type))
            raise TypeError(
                f"{cls.__name__}.write expects {cls.record_type.__name__} records, "
                f"got {type(wrong).__name__} {wrong!r}"
            ) from None

    async def write(self, batch: Sequence[R]) -> int:
        """Store ``batch`` in one transaction; return how many rows were new.

        All or nothing, idempotent on the natural key (see the module docstring), whichever
        way it goes in. An empty batch returns 0 without touching the database."""
        if not batch:
            return 0
        rows = self.rows(batch)
        days = self.days(batch)
        async with self.db.pool.acquire() as conn:
            await self.db.ensure_partitions(self.table, days, conn=conn)
            try:
                return await self._write_rows(conn, rows)
            except asyncpg.CheckViolationError as exc:
                if exc.constraint_name is not None:
                    raise  # a row broke a CHECK constraint: a data error for the caller
                # "no partition of relation ... found for row": a partition this process
                # knew was dropped meanwhile (retention elsewhere). Recreate it, once.
                self.db.forget_partitions(self.table)
                await self.db.ensure_partitions(self.table, days, conn=conn)
                return await self._write_rows(conn, rows)

    async def _write_rows(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> int:
        """The fast path if the policy allows it, else (or on a conflict) the idempotent one
        (``write_by_policy``)."""

        async def fast() -> None:
            async with conn.transaction():
                await self._copy(conn, self.table, rows, schema="mdp")

        return await write_by_policy(
            self.policy, self.paths, len(rows), fast, lambda: self._copy_insert(conn, rows)
        )

    async def _copy_insert(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> int:
        """The idempotent path: COPY into the stage, INSERT ... ON CONFLICT DO NOTHING."""
        async with conn.transaction():
            await self._copy(conn, self._stage, rows)
            status = await conn.execute(self._insert_sql)
            new = int(status.rpartition(" ")[2])  # "INSERT 0 <n>"
            if new < len(rows) and self._replace_sql is not None:
                status = await conn.execute(self._replace_sql)
                new += int(status.rpartition(" ")[2])  # "UPDATE <n>"
        return new

    async def _copy(
        self,
        conn: asyncpg.Connection,
        table: str,
        rows: list[tuple[Any, ...]],
        schema: str | None = None,
    ) -> None:
        """Binary COPY of ``rows`` into ``table``; a value that cannot be encoded raises
        asyncpg's client-side ``DataError``."""
        try:
            await conn.copy_records_to_table(
                table, records=rows, columns=self.columns, schema_name=schema
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError):
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            # asyncpg reports a value it cannot encode for COPY as a bare TypeError;
            # raise it as the client-side data error it is (like asyncpg does for
            # query arguments) so callers classify it as bad data, not a bug.
            raise ClientDataError(
                f"a value of the batch cannot be stored in mdp.{self.table}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def days(self, batch: Sequence[R]) -> set[date]:
        """The UTC days the batch's rows fall in (one partition each)."""
        try:
            return set(map(datetime.date, map(_ts, batch)))  # records hold UTC times
        except (AttributeError, TypeError, ValueError):
            wrong = next(r for r in batch if not isinstance(r.ts, datetime))
            raise ClientDataError(
                f"{type(self).__name__}: ts {wrong.ts!r} of {wrong!r} is not a datetime"
            ) from None


_QUOTE_COLUMNS = (
    "symbol",
    "ts",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "last",
    "last_size",
    "source",
)
_BAR_COLUMNS = (
    "symbol",
    "resolution",
    "ts",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
    "source",
    "partial",
)
# Written out in full (no formatting): identifiers are code constants, values come by COPY.
_QUOTES_INSERT = (
    "INSERT INTO mdp.quotes (symbol, ts, bid, ask, bid_size, ask_size, last, last_size, source) "
    "SELECT symbol, ts, bid, ask, bid_size, ask_size, last, last_size, source "
    "FROM mdp_stage_quotes ON CONFLICT DO NOTHING"
)
_BARS_INSERT = (
    "INSERT INTO mdp.bars (symbol, resolution, ts, open, high, low, close, volume, vwap, "
    "trade_count, source, partial) "
    "SELECT symbol, resolution, ts, open, high, low, close, volume, vwap, trade_count, source, "
    "partial FROM mdp_stage_bars ON CONFLICT DO NOTHING"
)
# A complete bar replaces a stored partial one of its key (the first complete one of the
# batch, in arrival order); run only when the INSERT met conflicts.
_BARS_REPLACE_PARTIAL = (
    "UPDATE mdp.bars b SET open = s.open, high = s.high, low = s.low, close = s.close, "
    "volume = s.volume, vwap = s.vwap, trade_count = s.trade_count, source = s.source, "
    "partial = false, ingested_at = now() "
    "FROM (SELECT DISTINCT ON (symbol, resolution, ts) * FROM mdp_stage_bars "
    "WHERE NOT partial ORDER BY symbol, resolution, ts, ctid) s "
    "WHERE b.symbol = s.symbol AND b.resolution = s.resolution AND b.ts = s.ts AND b.partial"
)


class QuotesSink(TableSink[Quote]):
    """Writes ``Quote`` batches to ``mdp.quotes`` (key ``(symbol, ts)``); see ``TableSink``."""

    kind = "quote"
    table = "quotes"
    record_type = Quote
    columns = _QUOTE_COLUMNS
    _to_row = attrgetter(*_QUOTE_COLUMNS)
    _insert_sql = _QUOTES_INSERT


class BarsSink(TableSink[Bar]):
    """Writes ``Bar`` batches to ``mdp.bars`` (key ``(symbol, resolution, ts)``); see
    ``TableSink``."""

    kind = "bar"
    table = "bars"
    record_type = Bar
    columns = _BAR_COLUMNS
    _to_row = attrgetter(*_BAR_COLUMNS)
    _insert_sql = _BARS_INSERT
    _replace_sql = _BARS_REPLACE_PARTIAL
