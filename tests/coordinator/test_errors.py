"""T11: how write errors are handled, checked by behaviour.

PostgreSQL itself raises each SQLSTATE (a trigger on the real ``mdp.quotes`` table fails
the rows of one symbol), asyncpg maps it to its exception class, and the coordinator with
the real ``QuotesSink`` either retries the whole batch (transient: the row commits once
the error stops) or bisects it (everything else: that row alone is dead-lettered with its
SQLSTATE, the others commit, nothing is retried). Client-side failures that no server
message carries (sockets, timeouts, a closed pool, a lost protocol state) are checked the
same way with a sink that raises them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import asyncpg.exceptions as pgexc
import pytest
from asyncpg.exceptions import _base as pgbase

from mdp_core.coordinator import CoordinatorSettings, RetryPolicy, WriteCoordinator
from mdp_core.dlq import DeadLetterQueue
from mdp_core.errors import ErrorInfo, PermanentError, TransientError, error_info
from mdp_core.models import Bar, Quote
from mdp_core.store.database import Database
from mdp_core.store.sinks import QuotesSink
from tests.coordinator.helpers import FakeClock, MemorySink, quotes

pytestmark = pytest.mark.timeout(120)

POISON = "ERR"
FAILURES = 2  # a transient error is raised this many times, then the row goes in

# A BEFORE INSERT trigger that fails rows of POISON with the SQLSTATE in mdp_test.sqlstate,
# while nextval(mdp_test.attempts) <= limit: a sequence is not rolled back with the failed
# transaction, so it counts the attempts.
_SETUP = """
CREATE SCHEMA mdp_test;
CREATE SEQUENCE mdp_test.attempts;
CREATE TABLE mdp_test.fault (sqlstate text NOT NULL, attempts_limit bigint NOT NULL);
CREATE FUNCTION mdp_test.fail() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE f mdp_test.fault;
BEGIN
    SELECT * INTO f FROM mdp_test.fault;
    IF NEW.symbol = 'ERR' AND f.sqlstate IS NOT NULL
       AND nextval('mdp_test.attempts') <= f.attempts_limit THEN
        RAISE EXCEPTION 'injected failure %', f.sqlstate USING ERRCODE = f.sqlstate;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail BEFORE INSERT ON mdp.quotes FOR EACH ROW EXECUTE FUNCTION mdp_test.fail();
"""

TRANSIENT = [
    "08006",  # connection_failure
    "08003",  # connection_does_not_exist
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "40003",  # statement_completion_unknown
    "53100",  # disk_full
    "53200",  # out_of_memory
    "53300",  # too_many_connections
    "57P01",  # admin_shutdown
    "57P03",  # cannot_connect_now
    "57014",  # query_canceled (statement timeout)
    "55P03",  # lock_not_available
    "25006",  # read_only_sql_transaction (a failover)
    "25P03",  # idle_in_transaction_session_timeout
    "58030",  # io_error
]
NOT_TRANSIENT = [
    "22003",  # numeric_value_out_of_range
    "22P02",  # invalid_text_representation
    "23505",  # unique_violation
    "23514",  # check_violation
    "40002",  # transaction_integrity_constraint_violation
    "42P01",  # undefined_table
    "42501",  # insufficient_privilege
    "0A000",  # feature_not_supported
    "XX000",  # internal_error
]


async def _write_with_fault(
    db: Database, dlq: DeadLetterQueue, sqlstate: str, limit: int
) -> tuple[WriteCoordinator[Quote], list[Quote]]:
    await db.pool.execute(_SETUP)
    await db.pool.execute("INSERT INTO mdp_test.fault VALUES ($1, $2)", sqlstate, limit)
    items = [*quotes(40), Quote(POISON, quotes(1)[0].ts, bid=1.0, ask=1.1)]
    clock = FakeClock()
    coord: WriteCoordinator[Quote] = WriteCoordinator(
        QuotesSink(db),
        CoordinatorSettings(workers=1, batch_size=len(items)),
        RetryPolicy(max_attempts=FAILURES + 1),
        dlq,
        clock=clock,
        sleep=clock.sleep,
    )
    async with asyncio.timeout(60), coord:
        await coord.submit_many(items)
        await coord.drain()
    return coord, items


@pytest.mark.parametrize("sqlstate", TRANSIENT)
async def test_a_transient_sqlstate_retries_the_batch(
    db: Database, tmp_path: Path, sqlstate: str
) -> None:
    dlq = DeadLetterQueue(tmp_path / "dlq")
    coord, items = await _write_with_fault(db, dlq, sqlstate, FAILURES)
    h = coord.stats()
    assert (h.committed, h.dead_lettered, h.retries) == (len(items), 0, FAILURES)
    assert h.last_error is not None and "injected failure" in h.last_error
    assert await db.pool.fetchval("SELECT count(*) FROM mdp.quotes") == len(items)
    assert dlq.count() == 0


@pytest.mark.parametrize("sqlstate", NOT_TRANSIENT)
async def test_any_other_sqlstate_isolates_the_row(
    db: Database, tmp_path: Path, sqlstate: str
) -> None:
    dlq = DeadLetterQueue(tmp_path / "dlq")
    coord, items = await _write_with_fault(db, dlq, sqlstate, 10**9)
    h = coord.stats()
    assert (h.committed, h.dead_lettered, h.retries) == (len(items) - 1, 1, 0)
    assert await db.pool.fetchval("SELECT count(*) FROM mdp.quotes") == len(items) - 1
    (record,) = dlq.list()
    assert record.record().symbol == POISON
    assert record.error.sqlstate == sqlstate
    assert "injected failure" in record.error.message


# -- client-side failures (no SQLSTATE) ------------------------------------------------------

CLIENT_TRANSIENT = [
    ConnectionResetError(104, "Connection reset by peer"),
    BrokenPipeError(32, "Broken pipe"),
    FileNotFoundError(2, "socket gone"),
    TimeoutError(),
    asyncpg.InterfaceError("connection is closed"),
    pgbase.InternalClientError("unknown error in protocol implementation"),  # a cut COMMIT
    pgbase.ProtocolError("unexpected message"),
    pgexc.OutdatedSchemaCacheError("cached statement plan is invalid"),
    TransientError("a custom sink says: retry"),
]
CLIENT_OTHER = [
    pgbase.DataError("invalid input for query argument $2"),
    pgbase.ClientConfigurationError("bad option"),
    PermanentError("a custom sink says: bad row"),
    RuntimeError("connection reset by peer: too many connections"),  # the text never decides
    TypeError("bug"),
    KeyError("bug"),
]


def _failing_on(bad: object, exc: BaseException, times: int) -> MemorySink:
    left = {"n": times}

    def fault(call: int, batch: Sequence[Quote | Bar]) -> BaseException | None:
        if left["n"] > 0 and any(q.key == bad for q in batch):
            left["n"] -= 1
            return exc
        return None

    return MemorySink(fault=fault)


@pytest.mark.parametrize("exc", CLIENT_TRANSIENT, ids=lambda e: type(e).__name__)
async def test_a_client_side_transient_failure_retries_the_batch(
    tmp_path: Path, exc: BaseException
) -> None:
    items = quotes(30)
    sink = _failing_on(items[3].key, exc, FAILURES)
    clock = FakeClock()
    coord: WriteCoordinator[Quote] = WriteCoordinator(
        sink,
        CoordinatorSettings(workers=1, batch_size=30),
        RetryPolicy(max_attempts=FAILURES + 1),
        DeadLetterQueue(tmp_path / "dlq"),
        clock=clock,
        sleep=clock.sleep,
    )
    async with asyncio.timeout(10), coord:
        await coord.submit_many(items)
        await coord.drain()
    h = coord.stats()
    assert (h.committed, h.dead_lettered, h.retries) == (30, 0, FAILURES)
    assert sink.calls == FAILURES + 1


@pytest.mark.parametrize("exc", CLIENT_OTHER, ids=lambda e: type(e).__name__)
async def test_any_other_client_side_failure_isolates_the_row(
    tmp_path: Path, exc: BaseException
) -> None:
    items = quotes(30)
    sink = _failing_on(items[3].key, exc, 10**9)
    dlq = DeadLetterQueue(tmp_path / "dlq")
    clock = FakeClock()
    coord: WriteCoordinator[Quote] = WriteCoordinator(
        sink, CoordinatorSettings(workers=1, batch_size=30), dlq=dlq, clock=clock,
        sleep=clock.sleep,
    )  # fmt: skip
    async with asyncio.timeout(10), coord:
        await coord.submit_many(items)
        await coord.drain()
    h = coord.stats()
    assert (h.committed, h.dead_lettered, h.retries, h.worker_restarts) == (29, 1, 0, 0)
    (record,) = dlq.list()
    assert record.record().key == items[3].key and record.error.type == type(exc).__name__


def test_error_info_carries_class_sqlstate_and_masked_message() -> None:
    info = error_info(
        pgexc.ConnectionFailureError("could not reach postgresql://bob:hunter2@db:5432/mdp")
    )
    assert info.type == "ConnectionFailureError"
    assert info.sqlstate == "08006"
    assert "hunter2" not in info.message and "***" in info.message
    assert ErrorInfo.from_dict(info.to_dict()) == info
    assert error_info(RuntimeError()).message == "RuntimeError()"
    assert error_info(info) is info
