"""T11: every relevant error maps to exactly one of retry (transient), bisect->DLQ
(permanent) or fatal, by class and SQLSTATE only."""

from __future__ import annotations

import inspect

import asyncpg
import asyncpg.exceptions as pgexc
import pytest
from asyncpg.exceptions import _base as pgbase

from mdp_core.errors import (
    ErrorInfo,
    PermanentError,
    TransientError,
    classify_error,
    error_info,
)

TABLE: list[tuple[BaseException, str]] = [
    # connection problems (SQLSTATE class 08) and client-side socket/timeouts
    (pgexc.ConnectionDoesNotExistError("connection was closed in the middle"), "transient"),
    (pgexc.ConnectionFailureError(), "transient"),
    (pgexc.ClientCannotConnectError(), "transient"),
    (pgexc.ConnectionRejectionError(), "transient"),
    (pgexc.TransactionResolutionUnknownError(), "transient"),
    (pgexc.ProtocolViolationError(), "transient"),
    (pgexc.PostgresConnectionError(), "transient"),
    (ConnectionResetError(104, "Connection reset by peer"), "transient"),
    (ConnectionRefusedError(111, "Connection refused"), "transient"),
    (BrokenPipeError(32, "Broken pipe"), "transient"),
    (FileNotFoundError(2, "socket gone"), "transient"),
    (OSError(101, "Network is unreachable"), "transient"),
    (TimeoutError(), "transient"),
    (asyncpg.InterfaceError("connection is closed"), "transient"),
    (pgexc.OutdatedSchemaCacheError("cached statement plan is invalid"), "transient"),
    # insufficient resources (53)
    (pgexc.DiskFullError("could not extend file"), "transient"),
    (pgexc.TooManyConnectionsError("sorry, too many clients already"), "transient"),
    (pgexc.OutOfMemoryError(), "transient"),
    (pgexc.ConfigurationLimitExceededError(), "transient"),
    (pgexc.InsufficientResourcesError(), "transient"),
    # operator intervention (57P01-57P03, 57P05, statement timeout 57014)
    (pgexc.AdminShutdownError("terminating connection"), "transient"),
    (pgexc.CrashShutdownError(), "transient"),
    (pgexc.CannotConnectNowError("the database system is starting up"), "transient"),
    (pgexc.IdleSessionTimeoutError(), "transient"),
    (pgexc.QueryCanceledError("canceling statement due to statement timeout"), "transient"),
    # transaction rollback (40)
    (pgexc.SerializationError(), "transient"),
    (pgexc.DeadlockDetectedError(), "transient"),
    (pgexc.StatementCompletionUnknownError(), "transient"),
    (pgexc.TransactionRollbackError(), "transient"),
    (pgexc.LockNotAvailableError(), "transient"),
    (pgexc.IdleInTransactionSessionTimeoutError(), "transient"),
    (pgexc.PostgresIOError(), "transient"),
    (TransientError("custom sink says: retry"), "transient"),
    # data exceptions (22) and integrity violations (23): bisect, dead-letter the rows
    (pgexc.CheckViolationError('violates check constraint "quotes_bid_check"'), "permanent"),
    (pgexc.NotNullViolationError(), "permanent"),
    (pgexc.UniqueViolationError(), "permanent"),
    (pgexc.ForeignKeyViolationError(), "permanent"),
    (pgexc.ExclusionViolationError(), "permanent"),
    (pgexc.NumericValueOutOfRangeError(), "permanent"),
    (pgexc.InvalidTextRepresentationError(), "permanent"),
    (pgexc.StringDataRightTruncationError(), "permanent"),
    (pgexc.DatetimeFieldOverflowError(), "permanent"),
    (pgexc.DataError(), "permanent"),
    (pgexc.UntranslatableCharacterError(), "permanent"),
    (pgexc.BadCopyFileFormatError(), "permanent"),
    (pgexc.TransactionIntegrityConstraintViolationError(), "permanent"),
    (pgbase.DataError("invalid input for query argument $2"), "permanent"),
    (PermanentError("custom sink says: bad row"), "permanent"),
    # programming errors and the unexpected: fatal
    (pgexc.UndefinedTableError('relation "mdp.quotes" does not exist'), "fatal"),
    (pgexc.UndefinedColumnError(), "fatal"),
    (pgexc.PostgresSyntaxError(), "fatal"),
    (pgexc.InsufficientPrivilegeError(), "fatal"),
    (pgexc.InFailedSQLTransactionError(), "fatal"),
    (pgexc.FeatureNotSupportedError(), "fatal"),
    (pgexc.InternalServerError(), "fatal"),
    (pgexc.DataCorruptedError(), "fatal"),
    (pgexc.DatabaseDroppedError(), "fatal"),
    (pgexc.InvalidCatalogNameError('database "x" does not exist'), "fatal"),
    (pgexc.InvalidPasswordError(), "fatal"),
    (pgbase.ClientConfigurationError("bad dsn"), "fatal"),
    (pgbase.UnsupportedServerFeatureError("no"), "fatal"),
    (pgbase.ProtocolError(), "fatal"),
    (pgbase.InternalClientError(), "fatal"),
    (pgexc.UnknownPostgresError(), "fatal"),
    (RuntimeError("bug"), "fatal"),
    (ValueError("bug"), "fatal"),
    (KeyError("bug"), "fatal"),
    (TypeError("bug"), "fatal"),
    (ZeroDivisionError(), "fatal"),
]


@pytest.mark.parametrize(("exc", "expected"), TABLE, ids=[type(e).__name__ for e, _ in TABLE])
def test_classifier_table(exc: BaseException, expected: str) -> None:
    assert classify_error(exc) == expected


def _postgres_error_classes() -> list[type[asyncpg.PostgresError]]:
    return [
        cls
        for _, cls in inspect.getmembers(pgexc, inspect.isclass)
        if issubclass(cls, asyncpg.PostgresError)
        and isinstance(getattr(cls, "sqlstate", None), str)
    ]


@pytest.mark.parametrize("cls", _postgres_error_classes(), ids=lambda c: c.__name__)
def test_every_asyncpg_error_class_by_sqlstate(cls: type[asyncpg.PostgresError]) -> None:
    """Sweep every asyncpg error class: the SQLSTATE class alone decides."""
    state: str = cls.sqlstate  # type: ignore[attr-defined]
    got = classify_error(cls("message text that must not matter: deadlock disk full"))
    if state[:2] in ("22", "23") or state == "40002":
        assert got == "permanent"
    elif state[:2] in ("08", "53") or state in {
        "40000", "40001", "40003", "40P01",
        "57000", "57014", "57P01", "57P02", "57P03", "57P05",
        "55P03", "25P03", "25P04", "58000", "58030",
    }:  # fmt: skip
        assert got == "transient"
    else:
        assert got == "fatal"


def test_message_text_never_decides() -> None:
    assert classify_error(RuntimeError("connection reset by peer: too many connections")) == "fatal"
    assert classify_error(pgexc.CheckViolationError("connection lost")) == "permanent"


def test_sqlstate_of_the_instance_wins_for_unknown_codes() -> None:
    exc = pgexc.UnknownPostgresError("new server error")
    exc.sqlstate = "08XYZ"  # type: ignore[attr-defined]
    assert classify_error(exc) == "transient"


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
