"""Symbols, stream names, lock keys and table names cannot inject SQL.

Records whose symbols hold quotes, semicolons, comments, placeholders or non-ASCII text go
through the sinks, the coordinator, rollups, checks and the DLQ replay, and come back byte
for byte (upper-cased, as the model normalises them) in exact counts, with every table
still there. APIs that take a table name refuse unknown names before any SQL runs. A scan
of mdp_core and mdp_dagster fails if SQL is ever built from anything but code constants.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mdp_core import CoordinatorSettings, RetryPolicy, WriteCoordinator
from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Bar, Quote
from mdp_core.settings import CheckSettings
from mdp_core.store.database import Database, LockHeldError, partition_name
from mdp_core.store.heartbeats import (
    last_heartbeats,
    latest_heartbeats,
    write_heartbeat,
)
from mdp_core.store.rollups import fetch_bars, rollup_bars, rollup_mismatches, summarize_bars
from mdp_core.store.sinks import BarsSink, QuotesSink
from mdp_core.streams import StreamsConfigError, StreamSpec, load_streams
from mdp_dagster.check_logic import check_duplicates, check_freshness, check_gaps, check_ohlc
from tests.security.helpers import write_text

NASTY = [
    "X'); DROP TABLE mdp.quotes; --",
    "Robert'); DROP TABLE mdp.bars;--",
    'A"B',
    "' OR '1'='1",
    "Ünïcødé",
    "株式",
    "a;b",
    "$1",
    "%s",
    "%(name)s",
    "{0}",
    "back\\slash",
    "--",
    "/*",
    "NULL",
]
#: What the model stores: stripped and upper-cased.
STORED = [s.strip().upper() for s in NASTY]
T0 = datetime(2024, 1, 3, 15, 0, tzinfo=UTC)  # a Wednesday, 10:00 in New York: XNYS open
TABLES = ("mdp.quotes", "mdp.bars", "mdp.stream_heartbeats", "mdp.schema_migrations")


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[Database]:
    async with Database.connect(fresh_dsn, max_size=4) as database:
        yield database


async def assert_tables_intact(db: Database) -> None:
    found = await db.pool.fetch("SELECT t, to_regclass(t) AS oid FROM unnest($1::text[]) t", TABLES)
    assert all(r["oid"] is not None for r in found), found


def quotes_of(symbol: str, n: int, start: datetime = T0) -> list[Quote]:
    return [
        Quote(symbol, start + timedelta(seconds=i), bid=10.0 + i, ask=10.5 + i) for i in range(n)
    ]


def bars_of(symbol: str, start: datetime, n: int, skip: int | None = None) -> list[Bar]:
    """``n`` consecutive 5s bars from ``start`` (leaving out slot ``skip``)."""
    return [
        Bar(symbol, start + timedelta(seconds=5 * i), 10 + i, 11 + i, 9 + i, 10.5 + i, 100, "5s")
        for i in range(n)
        if i != skip
    ]


async def stored_symbols(db: Database, table: str) -> dict[str, int]:
    sql = {
        "quotes": "SELECT symbol, count(*) AS n FROM mdp.quotes GROUP BY symbol",
        "bars": "SELECT symbol, count(*) AS n FROM mdp.bars GROUP BY symbol",
    }[table]
    return {r["symbol"]: r["n"] for r in await db.pool.fetch(sql)}


def test_the_model_normalises_and_keeps_every_character() -> None:
    for raw, stored in zip(NASTY, STORED, strict=True):
        assert Quote(raw, T0, bid=1.0).symbol.encode() == stored.encode()
    with pytest.raises(ValueError, match="printable"):
        Quote("NUL\x00; DROP", T0, bid=1.0)  # control characters are refused


# -- records through every writer ---------------------------------------------------------------


async def test_sinks_store_nasty_symbols_byte_for_byte(db: Database) -> None:
    quotes = [q for s in NASTY for q in quotes_of(s, 3)]
    bars = [b for s in NASTY for b in bars_of(s, T0, 4)]
    async with QuotesSink(db) as qs, BarsSink(db) as bs:
        assert await qs.write(quotes) == len(quotes)
        assert await bs.write(bars) == len(bars)
        assert await qs.write(quotes) == 0  # idempotent on these keys too
    assert await stored_symbols(db, "quotes") == dict.fromkeys(STORED, 3)
    assert await stored_symbols(db, "bars") == dict.fromkeys(STORED, 4)
    for symbol in STORED:  # each found by an exact match, as a parameter
        n = await db.pool.fetchval("SELECT count(*) FROM mdp.quotes WHERE symbol = $1", symbol)
        assert n == 3, symbol
    assert await db.count("quotes") == len(quotes) and await db.count("bars") == len(bars)
    await assert_tables_intact(db)


async def test_coordinator_commits_nasty_symbols_exactly(db: Database) -> None:
    settings = CoordinatorSettings(workers=3, batch_size=7, flush_interval=0.0)
    items = [q for s in NASTY for q in quotes_of(s, 5)]
    async with WriteCoordinator(QuotesSink(db), settings, RetryPolicy(), DeadLetterQueue()) as c:
        await c.submit_many(items)
        await c.submit_many(items[:10])  # repeats: committed again, no new rows
        await c.drain()
        health = c.stats()
    assert health.submitted == health.committed == len(items) + 10
    assert health.new_rows == len(items) and health.dead_lettered == 0
    assert await stored_symbols(db, "quotes") == dict.fromkeys(STORED, 5)
    await assert_tables_intact(db)


async def test_rollups_and_fetch_with_nasty_symbols(db: Database) -> None:
    start, end = T0, T0 + timedelta(minutes=2)
    async with BarsSink(db) as sink:
        await sink.write([b for s in NASTY for b in bars_of(s, start, 24)])
    result = await rollup_bars(db, "1m", start, end)
    assert result.rows == result.written == 2 * len(NASTY)
    assert result.symbols == tuple(sorted(STORED))
    fetched = await fetch_bars(db, STORED, "1m", start, end)
    assert sorted(b.symbol for b in fetched) == sorted(STORED * 2)
    for symbol in STORED:
        one = await fetch_bars(db, symbol, "1m", start, end)
        assert [b.symbol for b in one] == [symbol, symbol]
        assert one[0].open == 10.0 and one[1].close == 10.5 + 23
    summaries = await summarize_bars(db, "1m", start, end, limit=100)
    assert {s.symbol for s in summaries} == set(STORED)
    assert await rollup_mismatches(db, "1m", start, end) == (0, [])
    assert (await rollup_bars(db, "1m", start, end)).written == 0
    await assert_tables_intact(db)


async def test_checks_with_nasty_symbols(db: Database) -> None:
    start, now = T0, T0 + timedelta(minutes=2)
    async with BarsSink(db) as sink:  # each symbol misses the 5s bar at T0 + 60 s
        await sink.write([b for s in NASTY for b in bars_of(s, start, 24, skip=12)])
    gaps = await check_gaps(db, now, CheckSettings(window_minutes=5))
    meta: dict[str, Any] = {k: getattr(v, "value", v) for k, v in gaps.metadata.items()}
    assert meta["symbols_checked"] == len(NASTY)
    assert meta["missing_slots"] == meta["symbols_with_gaps"] == len(NASTY)
    listed = [
        line.split(" | ")[0].removeprefix("| ") for line in meta["worst_symbols"].splitlines()[2:]
    ]
    assert len(listed) == 10 and set(listed) <= set(STORED)  # shown as stored
    ohlc = await check_ohlc(db, "5s", start, now)
    assert ohlc.passed and ohlc.metadata["rows_checked"].value == 23 * len(NASTY)
    dups = await check_duplicates(db, "bars", "5s", start, now)
    assert dups.passed and dups.metadata["duplicate_rows"].value == 0
    # a hostile resolution is a value, compared as such: no rows, no error
    hostile = await check_ohlc(db, "5s' OR '1'='1", start, now)
    assert hostile.metadata["rows_checked"].value == 0
    await assert_tables_intact(db)


async def test_dlq_replay_of_nasty_symbols(db: Database, tmp_path: Path) -> None:
    queue = DeadLetterQueue(tmp_path / "dlq")
    items = [q for s in NASTY for q in quotes_of(s, 2)]
    queue.put(items, RuntimeError("database was down"), 3, stream="x'); DROP TABLE mdp.quotes; --")
    assert {r.item["symbol"] for r in queue.list()} == set(STORED)
    result = await queue.replay([QuotesSink(db), BarsSink(db)])
    assert (result.replayed, result.still_failing, result.quarantined) == (len(items), 0, 0)
    assert queue.count() == 0
    assert await stored_symbols(db, "quotes") == dict.fromkeys(STORED, 2)
    await assert_tables_intact(db)


# -- stream names, lock keys, heartbeats ----------------------------------------------------------


@pytest.mark.parametrize("name", ["x'); DROP TABLE mdp.quotes; --", "a b", "株式", "-lead", ""])
def test_stream_spec_refuses_a_malicious_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="String should match pattern") as caught:
        StreamSpec(name=name, provider="synthetic", symbols=["AAPL"])
    assert caught.value.errors()[0]["loc"] == ("name",)
    path = write_text(
        tmp_path / "streams.yaml",
        f"streams:\n  - name: {name!r}\n    provider: synthetic\n    symbols: [AAPL]\n",
    )
    with pytest.raises(StreamsConfigError, match=r"streams\[0\].*field 'name'"):
        load_streams(path)


async def test_lock_keys_and_heartbeats_are_parameters(db: Database) -> None:
    key = "mdp:stream:x'); SELECT pg_advisory_unlock_all(); --"
    async with db.advisory_lock(key):
        with pytest.raises(LockHeldError, match="is already held by pid") as caught:
            async with db.advisory_lock(key):
                pass
        assert repr(key) in str(caught.value)
    async with db.advisory_lock(key):  # released with its connection: free again
        pass
    names = ["x'); DROP TABLE mdp.stream_heartbeats; --", "株式", 'A"B', "%s"]
    for i, name in enumerate(names):
        await write_heartbeat(db, name, f"run'{i}; --", {"note": name, "n": i})
    latest = await latest_heartbeats(db, names)
    assert set(latest) == set(names)
    assert all(latest[n].counters["note"] == n for n in names)
    beats = await last_heartbeats(db, [f"run'{i}; --" for i in range(len(names))])
    assert len(beats) == len(names)
    await assert_tables_intact(db)


# -- APIs that take a table name -------------------------------------------------------------------

HOSTILE_TABLES = ["quotes; DROP TABLE mdp.bars", 'bars" --', "mdp.quotes", "QUOTES", "pg_class"]


@pytest.mark.parametrize("table", HOSTILE_TABLES)
async def test_table_name_apis_refuse_unknown_names(db: Database, table: str) -> None:
    checks = [
        (db.count(table), "unknown table"),
        (db.partitions(table), "unknown partitioned table"),
        (db.ensure_partitions(table, [date(2024, 1, 3)]), "unknown partitioned table"),
        (check_freshness(db, table, T0, CheckSettings()), "unknown table"),
        (check_duplicates(db, table, None, T0, T0), "unknown table"),
    ]
    for call, message in checks:
        with pytest.raises(ValueError, match=message) as caught:
            await call
        assert repr(table) in str(caught.value) and "expected one of" in str(caught.value)
    with pytest.raises(ValueError, match="unknown partitioned table"):
        partition_name(table, date(2024, 1, 3))
    await assert_tables_intact(db)


async def test_bad_resolutions_and_retention_days_are_refused(db: Database) -> None:
    hostile = "1m'; DROP TABLE mdp.bars; --"
    with pytest.raises(ValueError, match=r"unsupported resolution .* expected one of"):
        await rollup_bars(db, hostile, T0, T0)
    with pytest.raises(ValueError, match=r"unsupported resolution .* expected one of"):
        await fetch_bars(db, None, hostile, T0, T0)
    with pytest.raises(ValueError, match=r"retention days .* expected an integer"):
        await db.drop_partitions_older_than("1; DROP TABLE mdp.bars")  # type: ignore[arg-type]
    await assert_tables_intact(db)


async def test_retention_rebuilds_names_and_leaves_hostile_partitions_alone(db: Database) -> None:
    hostile = "quotes_p20200101'; DROP TABLE mdp.bars; --"
    await db.pool.execute(
        f'CREATE TABLE mdp."{hostile.replace(chr(34), chr(34) * 2)}" PARTITION OF mdp.quotes '
        "FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-01-02 00:00+00')"
    )  # test setup: a partition someone else attached, with a name that is SQL
    await db.ensure_partitions("quotes", [date(2020, 1, 2)], ahead=0)
    dropped = await db.drop_partitions_older_than(1, now=datetime(2020, 1, 10, tzinfo=UTC))
    assert dropped == ["quotes_p20200102"]
    assert hostile in await db.partitions("quotes")
    await assert_tables_intact(db)


# -- no SQL built from anything but constants -----------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mdp_core", "mdp_dagster")
SQL_METHODS = frozenset(
    {"execute", "executemany", "fetch", "fetchval", "fetchrow", "prepare", "cursor",
     "copy_records_to_table", "copy_to_table", "copy_from_query", "copy_from_table"}
)  # fmt: skip
SQL_WORDS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "DROP ", "ALTER ",
             "TRUNCATE ", "COPY ", "SET LOCAL ", "GRANT ", "WITH ")  # fmt: skip

# Every site where a query is not a literal or an UPPER_CASE module constant, or where an
# f-string holding SQL interpolates something: (file, function, source of the query).
# Each is checked by hand to interpolate only code constants; a new site fails the test
# until it is reviewed and added here with its reason.
ALLOWED = {
    # the partition DDL: table is checked against PARTITIONED_TABLES by partition_name(),
    # the rest are a date and ISO timestamps derived from it
    ("mdp_core/store/database.py", "_partition_ddl",
     "f\"CREATE TABLE IF NOT EXISTS mdp.{name} PARTITION OF mdp.{table} FOR VALUES FROM "
     "('{start.isoformat()}') TO ('{end.isoformat()}')\""),
    ("mdp_core/store/database.py", "Database.ensure_partitions", "_partition_ddl(table, day)"),
    # a code constant ("2s")
    ("mdp_core/store/database.py", "Database.ensure_partitions",
     "f\"SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'\""),
    # retention: table iterates PARTITIONED_TABLES, name is rebuilt by partition_name() from
    # the date parsed out of the catalog (never the catalog's text), how is one of two words
    ("mdp_core/store/database.py", "Database.drop_partitions_older_than",
     "f'ALTER TABLE mdp.{table} DETACH PARTITION mdp.{name} {how}'"),
    ("mdp_core/store/database.py", "Database.drop_partitions_older_than",
     "f'DROP TABLE IF EXISTS mdp.{name}'"),
    # migration files shipped in the package (mdp_core/store/migrations), not user input
    ("mdp_core/store/database.py", "Database.migrate", "m.sql"),
    # a lookup in the constant _COUNT_SQL; unknown names raise ValueError first
    ("mdp_core/store/database.py", "Database.count", "sql"),
    # EMBEDDED_DATABASE is the constant "mdp"
    ("mdp_core/store/database.py", "_embedded_dsn", "f'CREATE DATABASE \"{EMBEDDED_DATABASE}\"'"),
    # class constants of the sinks (_QUOTES_INSERT / _BARS_INSERT / _BARS_REPLACE_PARTIAL;
    # STAGE_TABLES values)
    ("mdp_core/store/sinks.py", "TableSink._copy_insert", "self._insert_sql"),
    ("mdp_core/store/sinks.py", "TableSink._copy_insert", "self._replace_sql"),
    # the COPY target: the class constant ``table`` ("quotes" / "bars", in schema "mdp",
    # the fast path) or the STAGE_TABLES value ``self._stage`` (the idempotent path)
    ("mdp_core/store/sinks.py", "TableSink._copy", "table"),
    # the same constants, taken from the sink classes by the bulk writer (mdp import)
    ("mdp_core/store/bulk.py", "BulkWriter._copy_insert", "self._insert_sql"),
    ("mdp_core/store/bulk.py", "BulkWriter._copy_insert", "self._stage"),
    # the fast path's COPY target: "bars" or "quotes", chosen from kind in __init__ (else
    # ValueError)
    ("mdp_core/store/bulk.py", "BulkWriter._write_data.fast", "self.table"),
    # names come from the caller's literal only: ["dagster"]
    ("mdp_core/cli/up.py", "_ensure_databases", "f'CREATE DATABASE \"{name}\"'"),
    # read API: sql is one of the constants _BARS_SQL / _QUOTES_SQL; query is the text the
    # server's format() built from them with %L (quote_literal) over bound parameters (a
    # COPY takes no parameters; asyncpg's copy_from_query does the same)
    ("mdp_core/store/read.py", "ArrowReader.read.work", "sql"),
    ("mdp_core/store/read.py", "ArrowReader.read.work", "query"),
    # lookups in constant dicts of queries; unknown names raise ValueError (_sql_for)
    ("mdp_dagster/check_logic.py", "check_freshness", "sql_for(NEWEST_SQL, table)"),
    ("mdp_dagster/check_logic.py", "check_duplicates", "sql_for(DUPLICATES_SQL, table)"),
    ("mdp_dagster/check_logic.py", "check_duplicates", "sql_for(DUPLICATE_KEYS_SQL, table)"),
}  # fmt: skip


def _is_constant_query(node: ast.expr) -> bool:
    """A string literal, or a module/class constant by name (``_ROLLUP_SQL``, ``STAGE_DDL``)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):  # an f-string without a placeholder
        return not any(isinstance(v, ast.FormattedValue) for v in node.values)
    return isinstance(node, ast.Name) and node.id.isupper()


def _has_sql(node: ast.JoinedStr) -> bool:
    text = "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
    return any(word in text for word in SQL_WORDS)


def _sql_sites(path: Path, relative: str) -> set[tuple[str, str, str]]:
    """(``relative``, function, source) of each query that is not a constant, and of each
    f-string, %-format or .format() holding SQL that interpolates something, in ``path``."""
    found: set[tuple[str, str, str]] = set()

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                inner = f"{scope}.{child.name}" if scope else child.name
            site: ast.expr | None = None
            if isinstance(child, ast.JoinedStr) and _has_sql(child):
                if any(isinstance(v, ast.FormattedValue) for v in child.values):
                    site = child
            elif (
                isinstance(child, ast.BinOp)
                and isinstance(child.op, ast.Mod)
                and isinstance(child.left, ast.Constant)
                and any(w in str(child.left.value) for w in SQL_WORDS)
            ):
                site = child
            elif isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                func = child.func
                if func.attr == "format" and isinstance(func.value, ast.Constant):
                    if any(w in str(func.value.value) for w in SQL_WORDS):
                        site = child
                elif func.attr in SQL_METHODS and child.args:
                    site = None if _is_constant_query(child.args[0]) else child.args[0]
            if site is not None:
                found.add((relative, scope, ast.unparse(site)))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def test_sql_is_built_only_from_code_constants() -> None:
    sites: set[tuple[str, str, str]] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            sites |= _sql_sites(path, path.relative_to(ROOT).as_posix())
    unreviewed = sorted(sites - ALLOWED)
    assert not unreviewed, (
        "SQL built from something other than a code constant (use a $n parameter for "
        "values; identifiers must come from constants; if this one does, add it to "
        f"ALLOWED with the reason): {unreviewed}"
    )
    stale = sorted(ALLOWED - sites)
    assert not stale, f"ALLOWED lists sites that no longer exist: {stale}"


def test_the_scan_catches_sql_built_from_a_variable(tmp_path: Path) -> None:
    sample = write_text(
        tmp_path / "probe.py",
        "async def bad(conn, symbol, table):\n"
        "    await conn.execute(f\"DELETE FROM mdp.quotes WHERE symbol = '{symbol}'\")\n"
        "    await conn.fetch('SELECT * FROM %s' % table)\n"
        "    await conn.fetch('SELECT * FROM {}'.format(table))\n"
        "    query = 'SELECT 1 WHERE x = ' + symbol\n"
        "    await conn.fetchval(query)\n"
        "async def good(conn, symbol):\n"
        "    await conn.fetch('SELECT * FROM mdp.quotes WHERE symbol = $1', symbol)\n"
        "    await conn.fetch(_FETCH_SQL, symbol)\n"
        "    await conn.execute(f'SET LOCAL x = 1')  # no interpolation\n",
    )
    assert sorted(source for _, _, source in _sql_sites(sample, "probe.py")) == [
        "'SELECT * FROM %s' % table",
        "'SELECT * FROM {}'.format(table)",
        "f\"DELETE FROM mdp.quotes WHERE symbol = '{symbol}'\"",
        "query",
    ]
