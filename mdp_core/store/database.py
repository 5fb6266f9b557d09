"""The database: an asyncpg pool on PostgreSQL (embedded by default), migrations, partitions,
retention and advisory locks.

``Database.connect()`` uses ``MDP_PG_DSN`` when set, else starts (or reuses) the embedded
server under ``MDP_HOME/pg`` and its database ``mdp``. Migrations (``migrations/NNN_name.sql``)
are applied on connect, in order, one transaction each, serialised across processes by an
advisory lock and recorded in ``mdp.schema_migrations``.

Every identifier in the SQL built here comes from a code constant or from a ``date``; values
are always parameters.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import socket
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from mdp_core.dsn import describe_dsn, mask_dsn, scrub
from mdp_core.logs import logger
from mdp_core.settings import MdpSettings, get_settings
from mdp_core.store.embedded import EmbeddedServer
from mdp_core.store.heartbeats import prune_heartbeats

__all__ = [
    "EMBEDDED_DATABASE",
    "MAINTENANCE_TIMEOUT",
    "PARTITIONED_TABLES",
    "PARTITION_LOCK_TIMEOUT",
    "STAGE_DDL",
    "STAGE_TABLES",
    "Database",
    "DatabaseError",
    "LockHeldError",
    "Migration",
    "StoreError",
    "load_migrations",
    "partition_name",
]

#: Tables partitioned by day on ``ts`` (schema ``mdp``); partitions are ``<table>_pYYYYMMDD``.
PARTITIONED_TABLES: tuple[str, ...] = ("quotes", "bars")
#: The database the embedded server keeps mdp's tables in.
EMBEDDED_DATABASE = "mdp"

_MIGRATIONS_LOCK = "mdp:migrations"
_PARTITIONS_LOCK = "mdp:partitions"
_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_PARTITION_NAME = re.compile(r"^(quotes|bars)_p(\d{8})$")
# Work that may legitimately run long (waiting for another process's migration, a rollup of
# a year, a retention detach) overrides the pool's command timeout with this one.
MAINTENANCE_TIMEOUT = 3600.0
# Creating a partition takes an ACCESS EXCLUSIVE lock on the parent table, which waits for
# every open reader of it, and every writer then queues behind that request. Bound the wait:
# past it the write fails with LockNotAvailableError (55P03, transient: retried).
PARTITION_LOCK_TIMEOUT = "2s"

# Per-connection TEMP staging tables the sinks COPY into (created by the pool's ``init``).
# ON COMMIT DELETE ROWS empties them at every commit, so a batch never sees another's rows.
STAGE_TABLES: dict[str, str] = {
    "quotes": "mdp_stage_quotes",
    "bars": "mdp_stage_bars",
}
STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_quotes (
    symbol text, ts timestamptz, bid float8, ask float8, bid_size float8, ask_size float8,
    last float8, last_size float8, source text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_bars (
    symbol text, resolution text, ts timestamptz, open float8, high float8, low float8,
    close float8, volume float8, vwap float8, trade_count bigint, source text, partial bool
) ON COMMIT DELETE ROWS;
"""

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS mdp;
CREATE TABLE IF NOT EXISTS mdp.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

_COUNT_SQL: dict[str, str] = {
    "quotes": "SELECT count(*) FROM mdp.quotes",
    "bars": "SELECT count(*) FROM mdp.bars",
    "stream_heartbeats": "SELECT count(*) FROM mdp.stream_heartbeats",
}

_LIST_PARTITIONS = """
SELECT c.relname, i.inhdetachpending AS detach_pending
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass($1)
ORDER BY c.relname
"""

_LOCK_HOLDER = """
SELECT l.pid, a.application_name
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
        SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)
LIMIT 1
"""


class StoreError(RuntimeError):
    """Base class of the store's own errors (not raised for SQL errors of a write)."""


class DatabaseError(StoreError):
    """The database cannot be reached or used; the message says where and what to do and
    never contains a password."""


class LockHeldError(StoreError):
    """An advisory lock is already held by another session."""


# -- migrations -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # file name without ".sql", e.g. "001_initial"
    sql: str
    checksum: str  # sha256 of the file, to notice an applied migration that was edited


@functools.cache
def load_migrations() -> tuple[Migration, ...]:
    """The packaged migrations, ordered by version (read once per process). Raises
    ``StoreError`` on a misnamed file or a duplicate version."""
    folder = resources.files("mdp_core.store") / "migrations"
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            raise StoreError(
                f"migration file {entry.name!r} is misnamed: expected NNN_name.sql "
                "(three digits, lowercase letters, digits and underscores)"
            )
        version = int(match.group(1))
        if version in found:
            raise StoreError(
                f"migrations {found[version].name!r} and {entry.name!r} share version {version}"
            )
        text = entry.read_text(encoding="utf-8")
        found[version] = Migration(
            version=version,
            name=entry.name.removesuffix(".sql"),
            sql=text,
            checksum=hashlib.sha256(text.encode()).hexdigest(),
        )
    return tuple(found[v] for v in sorted(found))


async def _applied(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    """version -> (version, name, checksum) of the migrations recorded as applied."""
    rows = await conn.fetch("SELECT version, name, checksum FROM mdp.schema_migrations")
    return {r["version"]: r for r in rows}


def _warn_drift(migrations: Sequence[Migration], applied: Mapping[int, asyncpg.Record]) -> None:
    """Warn about applied migrations edited since, and about ones this code does not know."""
    for m in migrations:
        done = applied.get(m.version)
        if done is not None and done["checksum"] != m.checksum:
            logger.warning(
                "migration {} changed after it was applied (as {}); "
                "write a new migration instead of editing one",
                m.name,
                done["name"],
            )
    newer = sorted(set(applied) - {m.version for m in migrations})
    if newer:
        logger.warning(
            "the database has migrations this code does not know ({}): "
            "it was migrated by a newer mdp",
            ", ".join(applied[v]["name"] for v in newer),
        )


def _version(names: list[str]) -> int:
    """The schema version of the applied migrations ``names`` (in order): 0 when none is."""
    return int(names[-1].split("_", 1)[0]) if names else 0


# -- partitions -----------------------------------------------------------------------------


def partition_name(table: str, day: date) -> str:
    """``quotes_p20240102``: derived only from a known table and a date."""
    if table not in PARTITIONED_TABLES:
        raise ValueError(
            f"unknown partitioned table {table!r}: expected one of {', '.join(PARTITIONED_TABLES)}"
        )
    return f"{table}_p{day:%Y%m%d}"


def _partition_ddl(table: str, day: date) -> str:
    name = partition_name(table, day)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    return (
        f"CREATE TABLE IF NOT EXISTS mdp.{name} PARTITION OF mdp.{table} "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


# -- errors ---------------------------------------------------------------------------------


def _where(dsn: str) -> str:
    try:
        return scrub(f"PostgreSQL at {describe_dsn(dsn)}", dsn)
    except ValueError as exc:
        return scrub(str(exc), dsn)


def _connect_error(dsn: str, exc: BaseException) -> DatabaseError:
    try:
        describe_dsn(dsn)
    except ValueError as bad:  # a mistyped DSN: say what is wrong with it
        return DatabaseError(
            f"cannot connect: {scrub(str(bad), dsn)}; expected a DSN like "
            "postgresql://user:password@host:5432/database (check MDP_PG_DSN)"
        )
    where = _where(dsn)
    reason = scrub(f"{type(exc).__name__}: {exc}", dsn)
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        hint = "authentication failed: check the user and password in MDP_PG_DSN"
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        hint = "the database does not exist: create it or fix the database name in MDP_PG_DSN"
    elif isinstance(exc, ConnectionRefusedError | FileNotFoundError):
        hint = (
            "nothing is listening there: start the server (`mdp db start` for the embedded "
            "one) or fix MDP_PG_DSN"
        )
    elif isinstance(exc, socket.gaierror):
        hint = "the host name cannot be resolved: check the host in MDP_PG_DSN"
    elif isinstance(exc, TimeoutError):
        hint = "the connection timed out: check the host, port and firewall"
    elif isinstance(exc, ValueError | OverflowError | asyncpg.InterfaceError):
        hint = "the DSN is malformed: expected postgresql://user:password@host:5432/database"
    else:
        hint = "check that the server is running and that MDP_PG_DSN is right"
    return DatabaseError(f"cannot connect to {where} ({reason}): {hint}")


# -- the database ---------------------------------------------------------------------------


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(STAGE_DDL)


def _keepalive(idle: int) -> Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]:
    """A pool ``init`` that also turns on TCP keepalive probes on the client's socket, so a
    peer that vanished without closing (a blackholed network) is noticed even between
    queries. asyncpg has no option for it; a unix socket has nothing to set."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        transport = getattr(conn, "_transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)

    return init


def _server_settings(settings: MdpSettings) -> dict[str, str]:
    """Session settings of every mdp connection: UTC, a name in pg_stat_activity, the
    server's own keepalive probes (it drops a client that vanished, releasing its locks),
    and the optional statement timeout."""
    out = {
        "application_name": "mdp",
        "timezone": "UTC",
        "tcp_keepalives_idle": str(settings.pg_keepalive_idle),
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }
    if settings.pg_statement_timeout:
        out["statement_timeout"] = str(int(settings.pg_statement_timeout * 1000))
    return out


class _Connecting:
    """What ``Database.connect()`` returns: await it, or use it as ``async with``."""

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, Database]]) -> None:
        self._opener = opener
        self._db: Database | None = None

    def __await__(self) -> Generator[Any, None, Database]:
        return self._opener().__await__()

    async def __aenter__(self) -> Database:
        self._db = await self._opener()
        return self._db

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            await self._db.close()


class Database:
    """A pool of connections to mdp's PostgreSQL database.

    Attributes: ``pool`` (asyncpg), ``dsn`` (the real DSN: do not log it), ``safe_dsn``
    (password masked), ``embedded`` (the ``EmbeddedServer`` when the embedded server is used,
    else ``None``). Build it with ``Database.connect()``.
    """

    def __init__(
        self, pool: asyncpg.Pool, dsn: str, embedded: EmbeddedServer | None = None
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.safe_dsn = mask_dsn(dsn)
        self.embedded = embedded
        self._known_partitions: set[tuple[str, date]] = set()

    # -- opening and closing -------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        dsn: str | None = None,
        *,
        min_size: int = 1,
        max_size: int = 8,
        migrate: bool = True,
        home: str | Path | None = None,
        connect_timeout: float = 10.0,
        command_timeout: float | None = None,
    ) -> _Connecting:
        """Open a pool: ``db = await Database.connect()`` or ``async with Database.connect()
        as db:`` (which closes the pool on exit).

        ``dsn`` None means ``MDP_PG_DSN`` when set, else the embedded server under
        ``MDP_HOME/pg`` (database ``mdp``), started if needed and left running; passing
        ``home`` picks the embedded server under ``home/pg`` even when ``MDP_PG_DSN`` is set.
        ``migrate`` applies pending migrations. Raises ``DatabaseError`` (never showing a
        password) when the database cannot be reached.

        Every connection has a command timeout (``command_timeout``, default
        ``MDP_PG_COMMAND_TIMEOUT``, 60 s: a query or COPY that hangs on a frozen or
        blackholed server fails as a ``TimeoutError``, which writers retry), TCP keepalive
        probes at both ends (``MDP_PG_KEEPALIVE_IDLE``) and, if set,
        ``MDP_PG_STATEMENT_TIMEOUT``.
        """

        async def opener() -> Database:
            return await cls._open(
                dsn,
                min_size=min_size,
                max_size=max_size,
                migrate=migrate,
                home=home,
                connect_timeout=connect_timeout,
                command_timeout=command_timeout,
            )

        return _Connecting(opener)

    @classmethod
    async def _open(
        cls,
        dsn: str | None,
        *,
        min_size: int,
        max_size: int,
        migrate: bool,
        home: str | Path | None,
        connect_timeout: float,
        command_timeout: float | None,
    ) -> Database:
        embedded: EmbeddedServer | None = None
        settings = get_settings()
        if dsn is None:
            if settings.pg_dsn is not None and home is None:
                dsn = settings.pg_dsn.get_secret_value()
            else:
                embedded = _embedded_server(home, settings)
                dsn = await _embedded_dsn(embedded, connect_timeout)
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_keepalive(settings.pg_keepalive_idle),
                timeout=connect_timeout,
                command_timeout=command_timeout or settings.pg_command_timeout,
                server_settings=_server_settings(settings),
            )
        except (
            OSError,
            OverflowError,  # a port past 65535
            TimeoutError,
            ValueError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            raise _connect_error(dsn, exc) from None
        db = cls(pool, dsn, embedded)
        logger.debug("connected to {}", db.describe())
        if migrate:
            try:
                await db.migrate()
            except BaseException:
                await pool.close()
                raise
        return db

    async def close(self) -> None:
        """Close the pool (waiting for connections in use to be released)."""
        await self.pool.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def describe(self) -> str:
        """Where this database is, for humans: host, port, database, user; never a password."""
        where = _where(self.dsn)
        if self.embedded is not None:
            return f"{where} (embedded server, data in {self.embedded.data_dir})"
        return where

    # -- migrations -----------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the pending migrations in order, one transaction each; return their names.

        Idempotent (a second call applies nothing) and safe when several processes connect
        at once: they queue on an advisory lock. When every migration is already applied it
        returns at once, without taking that lock. A migration that fails is rolled back and
        raised as ``DatabaseError`` naming it."""
        migrations = load_migrations()
        applied_now: list[str] = []
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('mdp.schema_migrations')") is not None:
                applied = await _applied(conn)
                if all(m.version in applied for m in migrations):
                    _warn_drift(migrations, applied)
                    return []
            await conn.execute(
                "SELECT pg_advisory_lock(hashtextextended($1, 0))",
                _MIGRATIONS_LOCK,
                timeout=MAINTENANCE_TIMEOUT,  # another process may be migrating
            )
            try:
                await conn.execute(_BOOTSTRAP)
                applied = await _applied(conn)
                for m in migrations:
                    if m.version in applied:
                        continue
                    try:
                        async with conn.transaction():
                            await conn.execute(m.sql, timeout=MAINTENANCE_TIMEOUT)
                            await conn.execute(
                                "INSERT INTO mdp.schema_migrations (version, name, checksum) "
                                "VALUES ($1, $2, $3)",
                                m.version,
                                m.name,
                                m.checksum,
                            )
                    except asyncpg.PostgresError as exc:
                        raise DatabaseError(
                            f"migration {m.name} failed on {self.describe()} and was rolled "
                            f"back: {type(exc).__name__}: {exc}"
                        ) from exc
                    logger.info("applied migration {}", m.name)
                    applied_now.append(m.name)
                _warn_drift(migrations, applied)
            finally:
                try:
                    await conn.execute(
                        "SELECT pg_advisory_unlock(hashtextextended($1, 0))", _MIGRATIONS_LOCK
                    )
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    pass  # the pool resets (and so unlocks) the connection on release
        return applied_now

    async def applied_migrations(self) -> list[str]:
        """Names of the applied migrations, in order ([] before the first migration)."""
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('mdp.schema_migrations')") is None:
                return []
            rows = await conn.fetch("SELECT name FROM mdp.schema_migrations ORDER BY version")
        return [r["name"] for r in rows]

    async def schema_version(self) -> int:
        """The highest applied migration version (0 when none is)."""
        return _version(await self.applied_migrations())

    # -- partitions and retention -----------------------------------------------------------

    async def ensure_partitions(
        self,
        table: str,
        days: Iterable[date],
        *,
        ahead: int = 1,
        conn: asyncpg.Connection | None = None,
    ) -> list[str]:
        """Create the daily partitions of ``mdp.<table>`` for ``days`` and the ``ahead`` days
        after each, unless they exist; return the names this call created or confirmed.

        Days already known to this object cost nothing. Creating a day ahead means the day
        rollover rarely needs DDL on the write path. Creation runs in its own short
        transaction (not the caller's: call it outside one), under a transaction-level
        advisory lock with ``CREATE TABLE IF NOT EXISTS``, so concurrent workers and
        processes creating the same day do not fail; it waits at most
        ``PARTITION_LOCK_TIMEOUT`` for the parent table's lock (then raises asyncpg's
        ``LockNotAvailableError``, SQLSTATE 55P03)."""
        wanted = {d + timedelta(days=k) for d in days for k in range(ahead + 1)}
        missing = sorted(d for d in wanted if (table, d) not in self._known_partitions)
        if not missing:
            return []
        names = [partition_name(table, d) for d in missing]
        async with self._connection(conn) as c, c.transaction():
            await c.execute(f"SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'")
            await c.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _PARTITIONS_LOCK
            )
            for day in missing:
                await c.execute(_partition_ddl(table, day))
        self._known_partitions.update((table, d) for d in missing)
        return names

    def forget_partitions(self, table: str, days: Iterable[date] | None = None) -> None:
        """Drop ``days`` (default: all) of ``table`` from the cache of known partitions
        (after another process dropped them), so ``ensure_partitions`` checks them again."""
        if days is None:
            self._known_partitions = {k for k in self._known_partitions if k[0] != table}
        else:
            self._known_partitions.difference_update((table, d) for d in days)

    async def partitions(self, table: str) -> list[str]:
        """Names of the daily partitions of ``mdp.<table>``, oldest first."""
        if table not in PARTITIONED_TABLES:
            raise ValueError(
                f"unknown partitioned table {table!r}: expected one of "
                f"{', '.join(PARTITIONED_TABLES)}"
            )
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_LIST_PARTITIONS, f"mdp.{table}")
        return [r["relname"] for r in rows]

    async def drop_partitions_older_than(
        self, days: int, *, now: datetime | None = None
    ) -> list[str]:
        """Retention: drop every daily partition of ``quotes`` and ``bars`` whose whole day
        ends at or before ``now - days`` (so no row younger than that is lost), and delete
        heartbeats older than that. Return the dropped partition names.

        Each partition is first detached ``CONCURRENTLY`` (which does not block writers;
        it waits for transactions already using the table), then dropped. A detach left
        pending by an interrupted run is finalized."""
        if not isinstance(days, int) or isinstance(days, bool) or days < 0:
            raise ValueError(f"retention days {days!r} is invalid: expected an integer >= 0")
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            raise ValueError(f"now {now.isoformat()} is naive: expected a timezone-aware time")
        cutoff = now - timedelta(days=days)
        dropped: list[str] = []
        async with self.pool.acquire() as conn:
            for table in PARTITIONED_TABLES:
                for row in await conn.fetch(_LIST_PARTITIONS, f"mdp.{table}"):
                    match = _PARTITION_NAME.match(row["relname"])
                    if match is None or match.group(1) != table:
                        continue  # not one of ours: leave it alone
                    day = datetime.strptime(match.group(2), "%Y%m%d").date()
                    end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
                    if end > cutoff:
                        continue
                    name = partition_name(table, day)  # rebuilt from the date, not the catalog
                    how = "FINALIZE" if row["detach_pending"] else "CONCURRENTLY"
                    await conn.execute(
                        f"ALTER TABLE mdp.{table} DETACH PARTITION mdp.{name} {how}",
                        timeout=MAINTENANCE_TIMEOUT,  # waits for transactions using the table
                    )
                    await conn.execute(f"DROP TABLE IF EXISTS mdp.{name}")
                    self._known_partitions.discard((table, day))
                    dropped.append(name)
            await prune_heartbeats(conn, cutoff)
        if dropped:
            logger.info("retention dropped {} partitions older than {}", len(dropped), cutoff)
        return dropped

    # -- locks ----------------------------------------------------------------------------

    @asynccontextmanager
    async def advisory_lock(self, key: str) -> AsyncIterator[asyncpg.Connection]:
        """Hold the session-level advisory lock ``key`` for the ``async with`` block, on a
        dedicated connection (outside the pool); e.g. "one writer per stream".

        Raises ``LockHeldError`` at once, naming the holder's pid, if another session holds
        it. The lock is released when the block ends (the connection is closed), and also if
        this process dies. Yields the lock's connection (its loss means the lock is lost)."""
        try:
            conn = await asyncpg.connect(
                self.dsn, timeout=10.0, server_settings={"application_name": "mdp"}
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _connect_error(self.dsn, exc) from None
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key)
            if not got:
                holder = await conn.fetchrow(_LOCK_HOLDER, key)
                who = (
                    f"pid {holder['pid']} ({holder['application_name'] or 'unknown application'})"
                    if holder is not None
                    else "another session"
                )
                raise LockHeldError(f"advisory lock {key!r} is already held by {who}")
            yield conn
        finally:
            await conn.close()

    # -- small helpers --------------------------------------------------------------------

    async def count(self, table: str) -> int:
        """Exact row count of ``mdp.<table>`` (``quotes``, ``bars`` or ``stream_heartbeats``)."""
        sql = _COUNT_SQL.get(table)
        if sql is None:
            raise ValueError(f"unknown table {table!r}: expected one of {', '.join(_COUNT_SQL)}")
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(sql))

    async def last_bar_times(
        self, symbols: Iterable[str], resolution: str, *, within: timedelta = timedelta(days=7)
    ) -> dict[str, datetime]:
        """Per symbol, the start of its newest complete stored ``resolution`` bar (partial
        bars are not counted; only bars from the last ``within``; symbols without one are
        absent)."""
        rows = await self.pool.fetch(
            "SELECT symbol, max(ts) AS ts FROM mdp.bars WHERE resolution = $1 "
            "AND symbol = ANY($2::text[]) AND ts >= $3 AND NOT partial GROUP BY symbol",
            resolution,
            list(symbols),
            datetime.now(UTC) - within,
        )
        return {row["symbol"]: row["ts"] for row in rows}

    async def status(self, *, count_timeout: float = 5.0) -> dict[str, Any]:
        """Server version, applied migrations and row counts (``None`` for a table whose
        count took longer than ``count_timeout`` seconds)."""
        async with self.pool.acquire() as conn:
            version = await conn.fetchval("SHOW server_version")
        migrations = await self.applied_migrations()
        counts: dict[str, int | None] = {}
        for table in _COUNT_SQL:
            try:
                counts[table] = await asyncio.wait_for(self.count(table), count_timeout)
            except (TimeoutError, asyncpg.UndefinedTableError):
                counts[table] = None
        return {
            "database": self.describe(),
            "dsn": self.safe_dsn,
            "server_version": version,
            "schema_version": _version(migrations),
            "migrations": migrations,
            "rows": counts,
        }

    @asynccontextmanager
    async def _connection(
        self, conn: asyncpg.Connection | None
    ) -> AsyncIterator[asyncpg.Connection]:
        if conn is not None:
            yield conn
        else:
            async with self.pool.acquire() as pooled:
                yield pooled


def _embedded_server(home: str | Path | None, settings: MdpSettings) -> EmbeddedServer:
    home_dir = Path(home).expanduser().resolve() if home else settings.home_dir
    return EmbeddedServer(home_dir / "pg")


# The ``mdp`` DSN of each embedded server (data dir, postmaster pid) whose ``mdp`` database
# this process has seen exist: later connects skip the admin round trip (a restarted server
# has a new pid, so it is checked again).
_EMBEDDED_READY: dict[tuple[Path, int | None], str] = {}


async def _embedded_dsn(server: EmbeddedServer, connect_timeout: float) -> str:
    """Start (or reuse) the embedded server and make sure its ``mdp`` database exists."""
    status = server.status()
    if status.running and (known := _EMBEDDED_READY.get((server.data_dir, status.pid))):
        return known
    try:
        admin = await asyncio.to_thread(server.start)
    except Exception as exc:
        raise DatabaseError(
            f"cannot start the embedded PostgreSQL in {server.data_dir} "
            f"({type(exc).__name__}: {exc}): check that the directory is writable, or set "
            "MDP_PG_DSN to use another server"
        ) from exc
    try:
        conn = await asyncpg.connect(admin, timeout=connect_timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _connect_error(admin, exc) from None
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", EMBEDDED_DATABASE
        )
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # another process created it first
    finally:
        await conn.close()
    dsn = server.dsn(database=EMBEDDED_DATABASE)
    _EMBEDDED_READY[(server.data_dir, server.status().pid)] = dsn
    return dsn
