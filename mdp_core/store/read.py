"""Read bars and quotes back out of PostgreSQL, into pandas or Arrow, fast.

``read_bars`` / ``read_quotes`` are synchronous (a script, a notebook: they work inside a
running event loop too); ``aread_bars`` / ``aread_quotes`` are their async twins. ``dsn=None``
means what ``Database.connect()`` means: ``MDP_PG_DSN`` when set, else the embedded server
under ``MDP_HOME`` (started if needed); the schema is created if missing, so a fresh
database reads as empty. Which database that is gets worked out once per process (again if
it stops answering), and a connection is kept for the next read: a small read costs a few
milliseconds.

Guarantees:
- rows with ``ts`` in ``[start, end)`` (UTC), for the given symbols (one, several, or all),
  sorted by symbol then ts; columns ``symbol, ts`` then the record's fields, in the order of
  ``Bar`` / ``Quote``; ``ts`` is timezone-aware UTC (``datetime64[us, UTC]``), prices and
  sizes float64 (NaN where NULL), ``trade_count`` nullable ``Int64``; the same columns and
  types when nothing matches (an unknown symbol gives an empty frame, not an error);
- bad input raises ``ValueError`` naming the value and what was expected, before any row is
  read: a naive datetime or an ISO string without an offset, ``start >= end``, an unknown
  resolution (the message lists the allowed labels and the resolutions stored), a bad
  symbol, ``as_`` or ``limit``;
- the rows travel as one binary ``COPY (query) TO STDOUT`` decoded into Arrow columns in C
  by ``adbc-driver-postgresql``: no Python object per row.

Every value reaches SQL as a bound parameter. A ``COPY`` cannot take parameters, so the
query text is built by the server: ``format()`` with ``%L`` (``quote_literal``) over the
bound values, the way asyncpg's ``copy_from_query`` does it; the query then runs with its
values known to the planner (partition pruning, index choice), which a generic plan
(``current_setting`` or a parameter table) does not get.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from mdp_core.dsn import scrub
from mdp_core.logs import logger
from mdp_core.models import RESOLUTIONS, normalize_symbol, parse_resolution
from mdp_core.settings import get_settings
from mdp_core.store.database import Database, DatabaseError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from adbc_driver_manager.dbapi import Connection

__all__ = [
    "BAR_COLUMNS",
    "QUOTE_COLUMNS",
    "ArrowReader",
    "ReadRequest",
    "UnknownResolutionError",
    "aread_bars",
    "aread_quotes",
    "bars_request",
    "quotes_request",
    "read_bars",
    "read_quotes",
    "resolve_dsn",
    "run_sync",
    "schema_of",
    "to_pandas",
]

#: Columns of ``read_bars``: ``symbol, ts`` then the fields of ``Bar``, in its order.
BAR_COLUMNS: tuple[str, ...] = (
    "symbol",
    "ts",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "resolution",
    "vwap",
    "trade_count",
    "source",
    "partial",
)
#: Columns of ``read_quotes``: ``symbol, ts`` then the fields of ``Quote``, in its order.
QUOTE_COLUMNS: tuple[str, ...] = (
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
_TEXT = frozenset({"symbol", "resolution", "source"})

Output = Literal["pandas", "arrow"]
_OUTPUTS = ("pandas", "arrow")

# The server builds each query (see the module docstring). $1 start, $2 end (ISO 8601 with
# an offset, from validated datetimes), $3 symbols (NULL = all), $4 row limit (NULL = none),
# $5 resolution (bars only). The text inside format() is a code constant. The bars query
# leaves out ``resolution`` (one value, known): ``read`` adds it as a constant column.
_BARS_SQL = """
SELECT set_config('application_name', 'mdp-read', false) AS app, format(
    'SELECT symbol, ts, open, high, low, close, volume, vwap, trade_count, source, partial'
    ' FROM mdp.bars WHERE resolution = %L AND ts >= %L::timestamptz AND ts < %L::timestamptz'
    '%s ORDER BY symbol, ts%s',
    $5::text, $1::text, $2::text,
    CASE WHEN $3::text[] IS NULL THEN ''
         ELSE format(' AND symbol = ANY (%L::text[])', $3::text[]) END,
    CASE WHEN $4::bigint IS NULL THEN '' ELSE format(' LIMIT %s', $4::bigint) END
) AS query
"""
_QUOTES_SQL = """
SELECT set_config('application_name', 'mdp-read', false) AS app, format(
    'SELECT symbol, ts, bid, ask, bid_size, ask_size, last, last_size, source'
    ' FROM mdp.quotes WHERE ts >= %L::timestamptz AND ts < %L::timestamptz'
    '%s ORDER BY symbol, ts%s',
    $1::text, $2::text,
    CASE WHEN $3::text[] IS NULL THEN ''
         ELSE format(' AND symbol = ANY (%L::text[])', $3::text[]) END,
    CASE WHEN $4::bigint IS NULL THEN '' ELSE format(' LIMIT %s', $4::bigint) END
) AS query
"""
# Which of the allowed labels have at least one row: one index probe per label.
_PRESENT_SQL = """
SELECT r.label
FROM unnest($1::text[]) WITH ORDINALITY AS r(label, n)
WHERE EXISTS (SELECT 1 FROM mdp.bars b WHERE b.resolution = r.label)
ORDER BY r.n
"""

T = TypeVar("T")


# -- requests: validated input ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A validated read: ``table`` ``"bars"`` or ``"quotes"``, ``symbols`` normalised (``None``
    = all), ``[start, end)`` in UTC with ``start < end``, ``resolution`` a label (bars only),
    ``limit`` ``None`` or >= 1."""

    table: Literal["bars", "quotes"]
    symbols: tuple[str, ...] | None
    start: datetime
    end: datetime
    resolution: str | None = None
    limit: int | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return BAR_COLUMNS if self.table == "bars" else QUOTE_COLUMNS

    def within(self, start: datetime, end: datetime) -> ReadRequest:
        """The same read over ``[start, end)`` (already validated UTC times)."""
        return replace(self, start=start, end=end)

    def describe(self) -> str:
        what = "all symbols" if self.symbols is None else ", ".join(self.symbols) or "no symbol"
        kind = f"{self.resolution} bars" if self.table == "bars" else "quotes"
        return f"{kind} of {what} in [{self.start.isoformat()}, {self.end.isoformat()})"


def _instant(name: str, value: object) -> datetime:
    """``value`` (an aware datetime or an ISO 8601 string with an offset) in UTC."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{name} {value!r} is not an ISO 8601 time: expected e.g. "
                "'2024-01-02T14:30:00+00:00' or '2024-01-02T14:30:00Z'"
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise TypeError(
            f"{name} {value!r} is a {type(value).__name__}: expected a timezone-aware "
            "datetime or an ISO 8601 string with an offset"
        )
    if parsed.tzinfo is None or parsed.tzinfo.utcoffset(parsed) is None:
        raise ValueError(
            f"{name} {value!r} is naive (no timezone): expected a timezone-aware datetime "
            "(e.g. datetime(2024, 1, 2, tzinfo=timezone.utc)) or an ISO string with an "
            "offset such as +00:00 or Z"
        )
    to_py = getattr(parsed, "to_pydatetime", None)  # pandas.Timestamp -> datetime
    plain: datetime = to_py() if to_py is not None else parsed
    return plain.astimezone(UTC)


def _symbols(symbols: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if symbols is None:
        return None
    if isinstance(symbols, str):
        return (normalize_symbol(symbols),)
    if isinstance(symbols, bytes) or not isinstance(symbols, Iterable):
        raise TypeError(
            f"symbols {symbols!r} is a {type(symbols).__name__}: expected a symbol, a list "
            "of symbols, or None for all"
        )
    return tuple(dict.fromkeys(normalize_symbol(s) for s in symbols))


def _limit(limit: object) -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit {limit!r} is invalid: expected an integer >= 1 or None")
    return limit


def _range(start: object, end: object) -> tuple[datetime, datetime]:
    lo, hi = _instant("start", start), _instant("end", end)
    if lo >= hi:
        raise ValueError(
            f"start {lo.isoformat()} is not before end {hi.isoformat()}: expected start < end "
            "(the range is [start, end))"
        )
    return lo, hi


def _output(as_: object) -> Output:
    if as_ not in _OUTPUTS:
        raise ValueError(f"as_ {as_!r} is invalid: expected one of {', '.join(_OUTPUTS)}")
    return as_  # type: ignore[return-value]


class UnknownResolutionError(ValueError):
    """A resolution that is not one of the allowed labels."""

    def __init__(self, value: object, present: Sequence[str] | None = None) -> None:
        self.value = value
        self.present = present
        stored = (
            "unknown: the database could not be asked"
            if present is None
            else ", ".join(present) or "none yet"
        )
        super().__init__(
            f"unknown resolution {value!r}: expected one of {', '.join(RESOLUTIONS)} "
            f"(stored in mdp.bars: {stored})"
        )


def bars_request(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str = "1m",
    *,
    limit: int | None = None,
) -> ReadRequest:
    """Validate a read of bars (see the module's guarantees). Raises ``ValueError`` (an
    ``UnknownResolutionError`` for the resolution, without the stored ones: the callers add
    them once connected) or ``TypeError``."""
    lo, hi = _range(start, end)
    try:
        label = parse_resolution(resolution)
    except ValueError:
        raise UnknownResolutionError(resolution) from None
    return ReadRequest("bars", _symbols(symbols), lo, hi, label, _limit(limit))


def quotes_request(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    *,
    limit: int | None = None,
) -> ReadRequest:
    """Validate a read of quotes (see the module's guarantees)."""
    lo, hi = _range(start, end)
    return ReadRequest("quotes", _symbols(symbols), lo, hi, None, _limit(limit))


# -- Arrow ----------------------------------------------------------------------------------


def schema_of(table: Literal["bars", "quotes"]) -> pa.Schema:
    """The Arrow schema ``read_bars`` / ``read_quotes`` return (``ts``: ``timestamp[us,
    UTC]``; text as ``string``; ``trade_count`` ``int64``; ``partial`` ``bool``; the rest
    ``float64``)."""
    import pyarrow as pa

    columns = BAR_COLUMNS if table == "bars" else QUOTE_COLUMNS
    types = {"ts": pa.timestamp("us", tz="UTC"), "trade_count": pa.int64(), "partial": pa.bool_()}
    return pa.schema(
        [pa.field(c, pa.string() if c in _TEXT else types.get(c, pa.float64())) for c in columns]
    )


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow table of ``schema_of`` as the DataFrame ``read_*`` returns (``trade_count``
    as nullable ``Int64``, so its dtype does not depend on whether a NULL is present)."""
    import pandas as pd
    import pyarrow as pa

    mapping = {pa.int64(): pd.Int64Dtype()}
    return table.to_pandas(types_mapper=mapping.get, split_blocks=True, self_destruct=True)


class _Idle:
    """Idle ADBC connections per DSN, reused by later reads of this process (connecting
    costs tens of milliseconds: the driver loads the server's type catalog). At most
    ``keep`` per DSN; a forked child starts with none of its parent's."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: dict[str, list[Connection]] = {}

    def take(self, dsn: str) -> Connection | None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the sockets are the parent's
                self._pid, self._idle = os.getpid(), {}
            found = self._idle.get(dsn)
            return found.pop() if found else None

    def give(self, dsn: str, conn: Connection) -> None:
        with self._lock:
            found = self._idle.setdefault(dsn, [])
            if self._pid == os.getpid() and len(found) < self.keep:
                found.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        """Close every idle connection (e.g. before stopping the server)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                with contextlib.suppress(Exception):
                    conn.close()


_IDLE = _Idle()
atexit.register(_IDLE.clear)


class ArrowReader:
    """A connection to the database ``Database.connect(dsn)`` uses (reused from an earlier
    read when one is idle), reading requests into Arrow tables.

    Synchronous and not thread-safe (one reader per thread). Use as a context manager, or
    call ``close()`` (which keeps the connection for the next reader). Errors of the
    database are raised as ``DatabaseError`` without the password. A reused connection that
    fails (the server restarted) is replaced by a new one and the statement retried once."""

    def __init__(self, dsn: str | None = None) -> None:
        self._arg = dsn
        known = _RESOLVED.get(_resolution_key(dsn))  # no event loop needed then
        if known is not None:
            self._dsn, self._remembered = known, True
        else:
            self._dsn, self._remembered = run_sync(lambda: _resolve(dsn, fresh=False))
        self._present: list[str] | None = None
        self._healthy = True
        conn = _IDLE.take(self._dsn)
        self._reused = conn is not None
        self._conn: Connection = conn if conn is not None else self._connect()

    def _connect(self) -> Connection:
        """A new connection. When the DSN was remembered from an earlier read and no longer
        connects (the embedded server was stopped), it is resolved again, which starts the
        server, and tried once more."""
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc

        try:
            return adbc.connect(self._dsn, autocommit=True)
        except adbc_driver_manager.Error as exc:
            if not self._remembered:
                raise self._error("connecting to", exc) from None
        self._dsn, self._remembered = run_sync(lambda: _resolve(self._arg, fresh=True))
        return self._connect()

    def __enter__(self) -> ArrowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._healthy:
            _IDLE.give(self._dsn, self._conn)
        else:
            with contextlib.suppress(Exception):
                self._conn.close()

    def _error(self, doing: str, exc: BaseException) -> DatabaseError:
        return DatabaseError(scrub(f"{doing} mdp's database failed: {exc}", self._dsn))

    def _run(self, doing: str, work: Callable[[Connection], T]) -> T:
        import adbc_driver_manager

        try:
            return work(self._conn)
        except adbc_driver_manager.Error as exc:
            if not self._reused:
                self._healthy = False
                raise self._error(doing, exc) from None
        with contextlib.suppress(Exception):  # a stale reused connection: replace it, once
            self._conn.close()
        self._reused = False
        self._conn = self._connect()
        return self._run(doing, work)

    def read(self, request: ReadRequest) -> pa.Table:
        """The rows of ``request`` as an Arrow table of ``schema_of(request.table)``."""
        sql = _BARS_SQL if request.table == "bars" else _QUOTES_SQL
        params: list[Any] = [
            request.start.isoformat(),
            request.end.isoformat(),
            list(request.symbols) if request.symbols is not None else None,
            request.limit,
        ]
        if request.table == "bars":
            params.append(request.resolution)

        def work(conn: Connection) -> pa.Table:
            with conn.cursor() as cur:
                cur.execute(sql, parameters=params)
                row = cur.fetchone()
                assert row is not None  # a SELECT without FROM returns one row
                query: str = row[1]
                # built by the server from the bound values above (module docstring)
                cur.execute(query)
                return cur.fetch_arrow_table()

        import pyarrow as pa

        table = self._run(f"reading {request.describe()} from", work)
        if request.table == "bars":
            label = pa.repeat(pa.scalar(request.resolution, pa.string()), table.num_rows)
            table = table.add_column(BAR_COLUMNS.index("resolution"), "resolution", label)
        return table.cast(schema_of(request.table))

    def resolutions_present(self) -> list[str]:
        """The resolution labels with at least one row in ``mdp.bars`` (cached per reader)."""

        def work(conn: Connection) -> list[str]:
            with conn.cursor() as cur:
                cur.execute(_PRESENT_SQL, parameters=[list(RESOLUTIONS)])
                return [r[0] for r in cur.fetchall()]

        if self._present is None:
            self._present = self._run("listing the resolutions of", work)
        return self._present


# -- the public API -----------------------------------------------------------------------------

# (dsn argument, MDP_PG_DSN, MDP_HOME, working directory) -> the DSN it resolved to, once
# the schema was there: later reads skip Database.connect.
_RESOLVED: dict[tuple[str | None, ...], str] = {}


def _resolution_key(dsn: str | None) -> tuple[str | None, ...]:
    settings = get_settings()
    configured = settings.pg_dsn.get_secret_value() if settings.pg_dsn else None
    return (dsn, configured, str(settings.home_dir), os.getcwd())


async def _resolve(dsn: str | None, *, fresh: bool) -> tuple[str, bool]:
    """(the DSN ``Database.connect(dsn)`` uses, whether it was remembered)."""
    key = _resolution_key(dsn)
    known = None if fresh else _RESOLVED.get(key)
    if known is not None:
        return known, True
    async with Database.connect(dsn, min_size=1, max_size=1) as db:
        _RESOLVED[key] = db.dsn
        return db.dsn, False


async def resolve_dsn(dsn: str | None = None, *, fresh: bool = False) -> str:
    """The DSN ``Database.connect(dsn)`` uses (starting the embedded server if needed and
    applying pending migrations), remembered for this process unless ``fresh``. Raises
    ``DatabaseError`` when it cannot connect."""
    return (await _resolve(dsn, fresh=fresh))[0]


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also inside a running event loop (a
    notebook's): there it runs on a loop of its own in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mdp-read") as pool:
        return pool.submit(ctx.run, asyncio.run, make()).result()


def _fetch(dsn: str | None, request: ReadRequest | UnknownResolutionError) -> pa.Table:
    with ArrowReader(dsn) as reader:
        if isinstance(request, UnknownResolutionError):
            raise UnknownResolutionError(request.value, reader.resolutions_present())
        if request.symbols == ():
            return schema_of(request.table).empty_table()
        table = reader.read(request)
        if table.num_rows == 0 and request.table == "bars":
            present = reader.resolutions_present()
            if request.resolution not in present:
                logger.warning(
                    "no {} bars are stored in mdp.bars (resolutions stored: {})",
                    request.resolution,
                    ", ".join(present) or "none yet",
                )
        return table


def _deliver(table: pa.Table, as_: Output) -> pd.DataFrame | pa.Table:
    return to_pandas(table) if _output(as_) == "pandas" else table


def _bars_or_error(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str,
    limit: int | None,
) -> ReadRequest | UnknownResolutionError:
    try:
        return bars_request(symbols, start, end, resolution, limit=limit)
    except UnknownResolutionError as exc:
        return exc  # raised with the stored resolutions once connected


@overload
def read_bars(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str = ...,
    *,
    dsn: str | None = ...,
    as_: Literal["pandas"] = ...,
    limit: int | None = ...,
) -> pd.DataFrame: ...
@overload
def read_bars(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str = ...,
    *,
    dsn: str | None = ...,
    as_: Literal["arrow"],
    limit: int | None = ...,
) -> pa.Table: ...
def read_bars(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str = "1m",
    *,
    dsn: str | None = None,
    as_: Output = "pandas",
    limit: int | None = None,
) -> pd.DataFrame | pa.Table:
    """Bars of ``resolution`` with ``ts`` in ``[start, end)`` for ``symbols`` (one, a list,
    or ``None`` for all), sorted by symbol then ts, as a pandas DataFrame (``as_="pandas"``)
    or a ``pyarrow.Table`` (``as_="arrow"``); at most ``limit`` rows. See the module's
    guarantees for columns, types and errors."""
    return _deliver(_fetch(dsn, _bars_or_error(symbols, start, end, resolution, limit)), as_)


@overload
def read_quotes(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    *,
    dsn: str | None = ...,
    as_: Literal["pandas"] = ...,
    limit: int | None = ...,
) -> pd.DataFrame: ...
@overload
def read_quotes(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    *,
    dsn: str | None = ...,
    as_: Literal["arrow"],
    limit: int | None = ...,
) -> pa.Table: ...
def read_quotes(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    *,
    dsn: str | None = None,
    as_: Output = "pandas",
    limit: int | None = None,
) -> pd.DataFrame | pa.Table:
    """Quotes with ``ts`` in ``[start, end)`` for ``symbols`` (one, a list, or ``None`` for
    all), sorted by symbol then ts, as a DataFrame or a ``pyarrow.Table``; NULL prices and
    sizes are NaN in pandas, null in Arrow. See ``read_bars``."""
    return _deliver(_fetch(dsn, quotes_request(symbols, start, end, limit=limit)), as_)


@overload
async def aread_bars(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str = ...,
    *,
    dsn: str | None = ...,
    as_: Literal["pandas"] = ...,
    limit: int | None = ...,
) -> pd.DataFrame: ...
@overload
async def aread_bars(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str = ...,
    *,
    dsn: str | None = ...,
    as_: Literal["arrow"],
    limit: int | None = ...,
) -> pa.Table: ...
async def aread_bars(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    resolution: str = "1m",
    *,
    dsn: str | None = None,
    as_: Output = "pandas",
    limit: int | None = None,
) -> pd.DataFrame | pa.Table:
    """``read_bars`` for async code: it runs in a worker thread, so the event loop keeps
    running meanwhile. Same arguments, result and errors."""
    _output(as_)
    request = _bars_or_error(symbols, start, end, resolution, limit)
    return await asyncio.to_thread(lambda: _deliver(_fetch(dsn, request), as_))


@overload
async def aread_quotes(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    *,
    dsn: str | None = ...,
    as_: Literal["pandas"] = ...,
    limit: int | None = ...,
) -> pd.DataFrame: ...
@overload
async def aread_quotes(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    *,
    dsn: str | None = ...,
    as_: Literal["arrow"],
    limit: int | None = ...,
) -> pa.Table: ...
async def aread_quotes(
    symbols: str | Iterable[str] | None,
    start: datetime | str,
    end: datetime | str,
    *,
    dsn: str | None = None,
    as_: Output = "pandas",
    limit: int | None = None,
) -> pd.DataFrame | pa.Table:
    """``read_quotes`` for async code (see ``aread_bars``)."""
    _output(as_)
    request = quotes_request(symbols, start, end, limit=limit)
    return await asyncio.to_thread(lambda: _deliver(_fetch(dsn, request), as_))
