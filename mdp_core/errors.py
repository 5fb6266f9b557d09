"""Error classification for writes: transient (retry the batch) or permanent (isolate rows).

Decided by exception class and SQLSTATE, never by message text:

- ``transient`` (infrastructure: retry the whole batch with backoff, then spool it to the
  DLQ): SQLSTATE class 08 (connection), 53 (insufficient resources: disk full, out of
  memory, too many connections), 40 except 40002 (serialization failure, deadlock,
  statement completion unknown), 57P01/57P02/57P03/57P05 and 57014 (admin/crash shutdown,
  cannot connect now, idle session timeout, statement timeout), 55P03 (lock timeout),
  25006 (read-only transaction: a failover in progress), 25P03/25P04 (session or
  transaction timeouts), 58000/58030 (server I/O); and on the client side ``OSError``
  (sockets, ``ConnectionError``), ``TimeoutError``, a bare ``asyncpg.InterfaceError`` (a
  closed connection or pool) and asyncpg's ``InternalClientError`` family (the client lost
  the protocol's state, e.g. the connection was cut during COMMIT: the outcome is unknown,
  and since every write is idempotent, writing again is safe).
- ``permanent``: everything else (SQLSTATE classes 22 and 23, 40002, a value asyncpg cannot
  encode, and also errors that no retry fixes, such as an undefined table or a bug in a
  sink). The coordinator never retries such a batch as a whole: it bisects it, so the rows
  that cause the error are dead-lettered with it and every other row commits.

A sink that is not asyncpg-based can raise ``TransientError`` or ``PermanentError`` (or
subclasses) to say which it means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base
from pydantic import ValidationError

from mdp_core.dsn import mask_secrets
from mdp_core.settings import describe_settings_error

__all__ = [
    "Classification",
    "ErrorInfo",
    "PermanentError",
    "TransientError",
    "classify_error",
    "error_info",
]

Classification = Literal["transient", "permanent"]

_TRANSIENT_CLASSES = frozenset({"08", "53"})
_TRANSIENT_STATES = frozenset(
    {
        "40000",  # transaction_rollback
        "40001",  # serialization_failure
        "40003",  # statement_completion_unknown
        "40P01",  # deadlock_detected
        "57000",  # operator_intervention
        "57014",  # query_canceled (statement_timeout)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "57P05",  # idle_session_timeout
        "55P03",  # lock_not_available
        "25006",  # read_only_sql_transaction (a failover in progress)
        "25P03",  # idle_in_transaction_session_timeout
        "25P04",  # transaction_timeout
        "58000",  # system_error
        "58030",  # io_error
    }
)
_NOT_TRANSIENT = frozenset({"40002"})  # transaction_integrity_constraint_violation


class TransientError(Exception):
    """Raised by a sink for an infrastructure problem worth retrying."""


class PermanentError(Exception):
    """Raised by a sink for data it will never accept (the rows must be isolated)."""


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def classify_error(exc: BaseException) -> Classification:
    """``"transient"`` or ``"permanent"`` for ``exc`` (see the module docstring)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = _sqlstate(exc)
        if state is None or state in _NOT_TRANSIENT:
            return "permanent"
        if state in _TRANSIENT_STATES or state[:2] in _TRANSIENT_CLASSES:
            return "transient"
        return "permanent"
    if isinstance(exc, TransientError):
        return "transient"
    if isinstance(exc, PermanentError):
        return "permanent"
    if type(exc) is asyncpg.InterfaceError:  # "connection is closed", "pool is closing"
        return "transient"
    if isinstance(exc, asyncpg_base.InternalClientError):
        return "transient"  # protocol state lost (a cut COMMIT), stale prepared statements
    if isinstance(exc, OSError | TimeoutError):
        return "transient"  # ConnectionError, socket gone, command timeout
    return "permanent"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What a dead-letter record says about its error (message masked of DSN passwords)."""

    type: str
    sqlstate: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "sqlstate": self.sqlstate, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            type=str(data.get("type", "")),
            sqlstate=data.get("sqlstate"),
            message=str(data.get("message", "")),
        )

    def __str__(self) -> str:
        state = f" [{self.sqlstate}]" if self.sqlstate else ""
        return f"{self.type}{state}: {self.message}"


def error_info(exc: BaseException | ErrorInfo) -> ErrorInfo:
    """Class name, SQLSTATE and masked message of ``exc``."""
    if isinstance(exc, ErrorInfo):
        return exc
    try:
        message = str(exc) or repr(exc)
    except Exception:  # some exception classes fail to format without arguments
        message = repr(exc)
    if isinstance(exc, ValidationError):  # a bad MDP_* value: name the variable
        message = describe_settings_error(exc) or message
    return ErrorInfo(
        type=type(exc).__name__, sqlstate=_sqlstate(exc), message=mask_secrets(message)
    )
