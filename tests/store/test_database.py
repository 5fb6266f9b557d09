"""Database: connect forms, migrations, retention, advisory locks, error messages."""

from __future__ import annotations

import asyncio
import socket
import traceback
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from mdp_core.store.database import (
    Database,
    DatabaseError,
    LockHeldError,
    StoreError,
    load_migrations,
)
from mdp_core.store.embedded import EmbeddedServer
from mdp_core.store.heartbeats import write_heartbeat
from mdp_core.store.sinks import BarsSink, QuotesSink
from tests.store.helpers import make_bars, make_quotes

PASSWORD = "s3cr3t-Pw"


async def test_connect_applies_migrations_once(fresh_dsn: str) -> None:
    db = await Database.connect(fresh_dsn)  # the awaitable form
    try:
        expected = [m.name for m in load_migrations()]
        assert expected[0] == "001_initial"
        assert await db.applied_migrations() == expected
        assert await db.migrate() == []  # idempotent: nothing left to apply
        rows = await db.pool.fetchval("SELECT count(*) FROM mdp.schema_migrations")
        assert rows == len(expected)
        assert await db.schema_version() == load_migrations()[-1].version
        tables = {
            r["relname"]
            for r in await db.pool.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'mdp' AND c.relkind IN ('r', 'p')"
            )
        }
        assert {"quotes", "bars", "stream_heartbeats", "schema_migrations"} <= tables
    finally:
        await db.close()


async def test_context_manager_closes_the_pool(fresh_dsn: str) -> None:
    async with Database.connect(fresh_dsn) as db:
        assert await db.pool.fetchval("SELECT 1") == 1
    assert db.pool.is_closing()


async def test_concurrent_connects_migrate_exactly_once(fresh_dsn: str) -> None:
    async with asyncio.timeout(60):
        dbs = await asyncio.gather(*(Database.connect(fresh_dsn) for _ in range(3)))
    try:
        counts = await dbs[0].pool.fetch(
            "SELECT version, count(*) AS n FROM mdp.schema_migrations GROUP BY version"
        )
        assert [r["n"] for r in counts] == [1] * len(load_migrations())
        for db in dbs:
            assert await db.migrate() == []
    finally:
        for db in dbs:
            await db.close()


async def _lock_waiters(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    )


async def test_migrate_takes_the_lock_only_while_something_is_pending(fresh_dsn: str) -> None:
    holder = await asyncpg.connect(fresh_dsn)  # another process holding the migrations lock
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtextextended('mdp:migrations', 0))")
        async with asyncio.timeout(60), Database.connect(fresh_dsn, migrate=False) as db:
            # pending migrations: migrate() queues behind the holder
            pending = asyncio.create_task(db.migrate())
            while await _lock_waiters(holder) == 0:
                assert not pending.done()
                await asyncio.sleep(0.02)
            assert not pending.done()
            await holder.execute("SELECT pg_advisory_unlock(hashtextextended('mdp:migrations', 0))")
            assert await pending == [m.name for m in load_migrations()]

            # all applied: connecting and migrating return at once, though the lock is held
            await holder.execute("SELECT pg_advisory_lock(hashtextextended('mdp:migrations', 0))")
            async with Database.connect(fresh_dsn) as again:
                assert await again.migrate() == []
            assert await _lock_waiters(holder) == 0
    finally:
        await holder.close()


async def test_connect_without_migrating_leaves_the_database_empty(fresh_dsn: str) -> None:
    async with Database.connect(fresh_dsn, migrate=False) as db:
        assert await db.applied_migrations() == []
        assert await db.schema_version() == 0
        assert await db.migrate() == [m.name for m in load_migrations()]


async def test_connect_uses_mdp_pg_dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    async with Database.connect() as db:
        assert db.dsn == fresh_dsn
        assert db.embedded is None
        assert await db.applied_migrations() != []


async def test_connect_defaults_to_the_embedded_server_under_mdp_home(outside_home: Path) -> None:
    # MDP_PG_DSN is unset (the autouse _isolated_home fixture clears MDP_*)
    server = EmbeddedServer(outside_home / "pg")
    try:
        async with Database.connect() as db:
            assert db.embedded is not None
            assert db.embedded.data_dir == server.data_dir
            assert await db.pool.fetchval("SELECT current_database()") == "mdp"
            assert "embedded server" in db.describe()
        assert server.status().running  # left running for other processes
        async with Database.connect() as again:  # reuses the running server
            assert again.dsn == db.dsn
        server.destroy()  # a new server in the same place: its mdp database is created again
        async with Database.connect() as anew:
            assert await anew.pool.fetchval("SELECT current_database()") == "mdp"
            assert await anew.applied_migrations() != []
    finally:
        server.destroy()


# -- errors never show the password ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_secret_free(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    assert PASSWORD not in str(exc)
    assert PASSWORD not in repr(exc)
    assert PASSWORD not in text
    return str(exc)


@pytest.mark.parametrize("password", [PASSWORD, f"{PASSWORD} with space", f"{PASSWORD}@at"])
async def test_refused_port_names_where_and_hides_the_password(password: str) -> None:
    port = _free_port()
    dsn = f"postgresql://trader:{password}@127.0.0.1:{port}/marketdb"
    with pytest.raises(DatabaseError) as info:
        await Database.connect(dsn, connect_timeout=5)
    message = _assert_secret_free(info.value)
    assert isinstance(info.value, StoreError)
    assert f"127.0.0.1:{port}" in message
    assert "'marketdb'" in message
    if "@at" not in password:  # asyncpg splits user info at the first "@": another host
        assert "nothing is listening" in message


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://trader:{PASSWORD}@127.0.0.1:notaport/marketdb",
        f"postgresql://trader:{PASSWORD}@[::1/marketdb",
        f"mysql://trader:{PASSWORD}@127.0.0.1:5432/marketdb",
        f"host=127.0.0.1 password={PASSWORD} dbname=marketdb",
    ],
)
async def test_malformed_dsn_is_a_clear_error_without_the_password(dsn: str) -> None:
    with pytest.raises(DatabaseError) as info:
        await Database.connect(dsn, connect_timeout=5)
    message = _assert_secret_free(info.value)
    assert "malformed" in message or "expected" in message


async def test_auth_failure_and_missing_database_hide_the_password(
    pg_server: EmbeddedServer,
) -> None:
    socket_dir = pg_server.status().socket_dir
    # the session server trusts local users, so use a role and a database that do not exist
    no_role = f"postgresql://ghost:{PASSWORD}@/postgres?host={socket_dir}"
    with pytest.raises(DatabaseError) as info:
        await Database.connect(no_role)
    message = _assert_secret_free(info.value)
    assert "ghost" in message
    assert "authentication failed" in message

    no_db = f"postgresql://postgres:{PASSWORD}@/no_such_db?host={socket_dir}"
    with pytest.raises(DatabaseError) as info:
        await Database.connect(no_db)
    message = _assert_secret_free(info.value)
    assert "'no_such_db'" in message
    assert "does not exist" in message


async def test_safe_dsn_and_describe_mask_the_password(fresh_dsn: str) -> None:
    with_password = fresh_dsn.replace("postgres:@", f"postgres:{PASSWORD}@")
    async with Database.connect(with_password) as db:  # trust auth ignores the password
        assert db.dsn == with_password
        assert PASSWORD not in db.safe_dsn
        assert "***" in db.safe_dsn
        assert PASSWORD not in db.describe()
        assert PASSWORD not in str(await db.status())


# -- partitions and retention ---------------------------------------------------------------


async def test_partition_names_come_only_from_known_tables_and_dates(db: Database) -> None:
    with pytest.raises(ValueError, match="unknown partitioned table"):
        await db.ensure_partitions("quotes; DROP TABLE mdp.bars", [date(2024, 1, 2)])
    with pytest.raises(ValueError, match="unknown partitioned table"):
        await db.partitions("pg_class")
    # the day asked for, and the next one ahead of time
    created = await db.ensure_partitions("bars", [date(2024, 1, 2)])
    assert created == ["bars_p20240102", "bars_p20240103"]
    assert await db.ensure_partitions("bars", [date(2024, 1, 2)]) == []  # cached
    assert await db.ensure_partitions("bars", [date(2024, 1, 9)], ahead=0) == ["bars_p20240109"]
    assert await db.partitions("bars") == ["bars_p20240102", "bars_p20240103", "bars_p20240109"]


async def test_retention_drops_exactly_the_old_partitions(db: Database) -> None:
    start = datetime(2024, 3, 1, 12, tzinfo=UTC)
    async with QuotesSink(db) as quotes, BarsSink(db) as bars:
        for day in range(5):  # 1..5 March, 10 rows a day each
            await quotes.write(make_quotes(10, start=start + timedelta(days=day)))
            await bars.write(make_bars(10, start=start + timedelta(days=day)))
    for day in range(5):
        await write_heartbeat(db, "s", "run", {"n": day}, ts=start + timedelta(days=day))

    # now = 6 March 06:00, keep 3 days: cutoff 3 March 06:00; 1 and 2 March end before it
    now = datetime(2024, 3, 6, 6, tzinfo=UTC)
    dropped = await db.drop_partitions_older_than(3, now=now)
    assert sorted(dropped) == [
        "bars_p20240301",
        "bars_p20240302",
        "quotes_p20240301",
        "quotes_p20240302",
    ]
    # 6 March was created a day ahead
    assert await db.partitions("quotes") == [f"quotes_p2024030{d}" for d in (3, 4, 5, 6)]
    assert await db.partitions("bars") == [f"bars_p2024030{d}" for d in (3, 4, 5, 6)]
    assert await db.count("quotes") == 30
    assert await db.count("bars") == 30
    assert await db.count("stream_heartbeats") == 3  # 1 and 2 March 12:00 are before the cutoff
    assert await db.drop_partitions_older_than(3, now=now) == []  # nothing left to drop

    # a dropped day can be written again: the sink recreates its partition
    async with QuotesSink(db) as quotes:
        assert await quotes.write(make_quotes(4, start=start)) == 4
    assert "quotes_p20240301" in await db.partitions("quotes")


async def test_retention_rejects_bad_arguments(db: Database) -> None:
    with pytest.raises(ValueError, match="expected an integer >= 0"):
        await db.drop_partitions_older_than(-1)
    with pytest.raises(ValueError, match="naive"):
        await db.drop_partitions_older_than(1, now=datetime(2024, 1, 1))


# -- advisory locks and helpers -------------------------------------------------------------


async def test_advisory_lock_is_exclusive_and_released(db: Database) -> None:
    async with asyncio.timeout(30):
        async with db.advisory_lock("stream:aapl-quotes") as conn:
            holder_pid = conn.get_server_pid()
            with pytest.raises(LockHeldError, match=f"pid {holder_pid}"):
                async with db.advisory_lock("stream:aapl-quotes"):
                    pass
            async with db.advisory_lock("stream:msft-quotes"):  # another key is free
                pass
        async with db.advisory_lock("stream:aapl-quotes"):  # released on exit
            pass


async def test_count_refuses_unknown_tables(db: Database) -> None:
    with pytest.raises(ValueError, match="unknown table 'pg_authid'"):
        await db.count("pg_authid")


async def test_heartbeats_store_counters(db: Database) -> None:
    ts = datetime(2024, 1, 2, tzinfo=UTC)
    await write_heartbeat(db, "aapl", "run-1", {"committed": 5}, ts=ts)
    row = await db.pool.fetchrow("SELECT stream, run_id, ts, counters FROM mdp.stream_heartbeats")
    assert (row["stream"], row["run_id"], row["ts"]) == ("aapl", "run-1", ts)
    assert row["counters"] == '{"committed": 5}'
    with pytest.raises(asyncpg.CheckViolationError):
        await db.pool.execute(
            "INSERT INTO mdp.stream_heartbeats (stream, run_id, counters) VALUES ('a', 'r', '[]')"
        )
