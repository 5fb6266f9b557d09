"""Bulk writes of Arrow tables into ``mdp.quotes`` / ``mdp.bars`` (``mdp import``).

A table in the stage layout (``mdp_core.columns.QUOTE_SCHEMA`` / ``BAR_SCHEMA``) is encoded
for PostgreSQL's binary COPY by ``pgpq`` (in Rust, column by column: no Python object per
row) and written the two ways the sinks write (``mdp_core.store.write_path``), one
transaction per table, after the daily partitions of its rows are created: COPY straight
into the table (the fast path: a file of rows not stored yet), or, when a key of the table
is stored already, COPY into the connection's TEMP stage table and the sinks' own ``INSERT
... ON CONFLICT DO NOTHING`` (the encoded data is sent again, not encoded again; after a
conflict the writer stays on that path for a while, so re-importing a file does not pay for
two writes per table). So, like the sinks:

- a table is committed whole or not at all, and writing it again adds nothing (idempotent
  on the natural key; the first stored row wins);
- a transient error (connection lost, database restarting: ``classify_error``) is retried
  with the ``RetryPolicy``'s backoff; once its attempts are spent the error is raised
  (nothing of that table was stored, and importing the file again is safe);
- a table the database refuses for its data (SQLSTATE classes 22, 23) is split in halves
  until the refused rows are alone; each goes to the dead-letter spool with its error
  (``mdp dlq list``; replayable), the rest is stored;
- any other error is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc

from mdp_core.errors import classify_error
from mdp_core.logs import logger
from mdp_core.models import Bar, Quote, Record
from mdp_core.retry import RetryPolicy
from mdp_core.store.database import STAGE_TABLES
from mdp_core.store.sinks import BarsSink, QuotesSink
from mdp_core.store.write_path import WritePathCounts, WritePathPolicy, write_by_policy

if TYPE_CHECKING:
    from mdp_core.dlq import DeadLetterQueue
    from mdp_core.store.database import Database

__all__ = ["BulkResult", "BulkWriter"]

_SINKS: dict[str, type[BarsSink] | type[QuotesSink]] = {"bars": BarsSink, "quotes": QuotesSink}


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What one ``write`` did: ``stored`` rows committed (``new`` of them new rows, the rest
    already in the table) and ``spooled`` rows the database refused, now in the DLQ."""

    stored: int = 0
    new: int = 0
    spooled: int = 0

    def __add__(self, other: BulkResult) -> BulkResult:
        return BulkResult(
            self.stored + other.stored, self.new + other.new, self.spooled + other.spooled
        )


class BulkWriter:
    """Writes Arrow tables of ``kind`` (``"bars"`` or ``"quotes"``) through COPY; see the
    module docstring for what ``write`` guarantees. Safe to use from concurrent tasks (each
    write takes its own pooled connection). ``policy`` picks the write path of each table
    (default: fast first); ``paths`` counts the tables and rows committed on each."""

    def __init__(
        self,
        db: Database,
        kind: str,
        *,
        dlq: DeadLetterQueue,
        retry_policy: RetryPolicy | None = None,
        stream: str = "import",
        policy: WritePathPolicy | None = None,
    ) -> None:
        if kind not in _SINKS:
            raise ValueError(f"kind {kind!r} is invalid: expected 'bars' or 'quotes'")
        import pgpq  # checked here: the CLI reports a missing extra before any work

        self._encoder_type = pgpq.ArrowToPostgresBinaryEncoder
        self.db = db
        self.kind = kind
        self.table = "bars" if kind == "bars" else "quotes"
        self.dlq = dlq
        self.retry_policy = retry_policy or RetryPolicy()
        self.stream = stream
        self.policy = policy if policy is not None else WritePathPolicy()
        self.paths = WritePathCounts()
        sink = _SINKS[kind]
        self._columns: Sequence[str] = sink.columns
        self._insert_sql = sink._insert_sql
        self._record_type: type[Bar] | type[Quote] = sink.record_type
        self._stage = STAGE_TABLES[self.table]

    async def write(self, table: pa.Table, encoded: bytes | None = None) -> BulkResult:
        """Store ``table`` (see the module docstring); an empty table costs nothing.
        ``encoded`` is ``encode(table)`` when the caller made it already (in a thread)."""
        if table.num_rows == 0:
            return BulkResult()
        try:
            new = await self._with_retries(table, encoded)
        except Exception as exc:
            if classify_error(exc) != "permanent":
                raise
            return await self._isolate(table, exc)
        return BulkResult(stored=table.num_rows, new=new)

    async def _with_retries(self, table: pa.Table, encoded: bytes | None) -> int:
        data = self.encode(table) if encoded is None else encoded
        policy = self.retry_policy
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._write_once(table, data)
            except Exception as exc:
                if classify_error(exc) != "transient" or attempt >= policy.max_attempts:
                    raise
                delay = policy.backoff(attempt)
                logger.warning(
                    "import: writing {} rows to mdp.{} failed ({}: {}); retry {} in {:.2f}s",
                    table.num_rows, self.table, type(exc).__name__, exc, attempt, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _write_once(self, table: pa.Table, data: bytes) -> int:
        days = _days(table)
        async with self.db.pool.acquire() as conn:
            await self.db.ensure_partitions(self.table, days, conn=conn)
            try:
                return await self._write_data(conn, data, table.num_rows)
            except asyncpg.CheckViolationError as exc:
                if exc.constraint_name is not None:
                    raise
                # "no partition of relation ... found for row": a partition this process
                # knew was dropped meanwhile (retention elsewhere). Recreate it, once.
                self.db.forget_partitions(self.table)
                await self.db.ensure_partitions(self.table, days, conn=conn)
                return await self._write_data(conn, data, table.num_rows)

    async def _write_data(self, conn: asyncpg.Connection, data: bytes, rows: int) -> int:
        """The fast path if the policy allows it, else (or on a conflict) the idempotent one."""

        async def fast() -> None:
            async with conn.transaction():
                await conn.copy_to_table(
                    self.table,
                    schema_name="mdp",
                    source=_chunks(data),
                    columns=list(self._columns),
                    format="binary",
                )

        return await write_by_policy(
            self.policy, self.paths, rows, fast, lambda: self._copy_insert(conn, data)
        )

    def encode(self, table: pa.Table) -> bytes:
        """``table`` as PostgreSQL's binary COPY data; raises ``ValueError`` if its columns
        are not the stage layout."""
        if list(table.column_names) != list(self._columns):
            raise ValueError(
                f"table columns {table.column_names} are not the stage layout of "
                f"mdp.{self.table}: expected {list(self._columns)}"
            )
        encoder = self._encoder_type(table.schema)
        parts = [encoder.write_header()]
        parts.extend(encoder.write_batch(batch) for batch in table.to_batches())
        parts.append(encoder.finish())
        return b"".join(parts)

    async def _copy_insert(self, conn: asyncpg.Connection, data: bytes) -> int:
        async with conn.transaction():
            await conn.copy_to_table(
                self._stage, source=_chunks(data), columns=list(self._columns), format="binary"
            )
            status = await conn.execute(self._insert_sql)
        return int(status.rpartition(" ")[2])  # "INSERT 0 <n>"

    async def _isolate(self, table: pa.Table, error: BaseException) -> BulkResult:
        """Split a refused table until the refused rows are alone; spool those."""
        if table.num_rows == 1:
            record = self.record(table.to_pylist()[0])
            await asyncio.to_thread(self.dlq.put, [record], error, 1, stream=self.stream)
            logger.error(
                "import: mdp.{} refused {!r}: {}: {} (sent to the dead-letter spool)",
                self.table, record, type(error).__name__, error,
            )  # fmt: skip
            return BulkResult(spooled=1)
        half = table.num_rows // 2
        return await self.write(table.slice(0, half)) + await self.write(table.slice(half))

    def record(self, row: dict[str, Any]) -> Record:
        """The Quote or Bar of one stage row."""
        return self._record_type(**row)


def _days(table: pa.Table) -> set[date]:
    """The UTC days of the table's rows (one partition each)."""
    days = pc.unique(pc.cast(table.column("ts"), pa.date32())).to_pylist()
    return {d for d in days if d is not None}


async def _chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """``data`` in slices, the form of COPY source asyncpg sends without a thread hop."""
    view = memoryview(data)
    for at in range(0, len(view), size):
        yield bytes(view[at : at + size])
