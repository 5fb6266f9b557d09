"""What the dead-letter spool holds: ``DeadLetterRecord`` (one item, enough to rebuild it
exactly, with its error and attempts), one JSON line each; and ``ReplayResult``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from mdp_core.errors import ErrorInfo
from mdp_core.models import Record, record_from_dict

__all__ = ["DeadLetterRecord", "ReplayBusyError", "ReplayResult", "parse_line", "to_line"]


class ReplayBusyError(RuntimeError):
    """Another replay or purge is running on the same spool."""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One dead-lettered item, enough to rebuild it exactly (``record()``)."""

    id: str
    kind: str
    item: dict[str, Any]
    error: ErrorInfo
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    stream: str = ""
    source: str = ""
    replays: int = 0  # replays in which it failed for a data (or unknown) reason

    def record(self) -> Record:
        """The Quote or Bar this record holds (validated again; raises if it is invalid)."""
        return record_from_dict(self.kind, self.item)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "stream": self.stream,
            "source": self.source,
            "item": self.item,
            "error": self.error.to_dict(),
            "attempts": self.attempts,
            "replays": self.replays,
            "first_failed_at": self.first_failed_at.isoformat(),
            "last_failed_at": self.last_failed_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetterRecord:
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            item=dict(data["item"]),
            error=ErrorInfo.from_dict(data.get("error") or {}),
            attempts=int(data.get("attempts", 0)),
            first_failed_at=datetime.fromisoformat(data["first_failed_at"]),
            last_failed_at=datetime.fromisoformat(data["last_failed_at"]),
            stream=str(data.get("stream", "")),
            source=str(data.get("source", "")),
            replays=int(data.get("replays", 0)),
        )

    def failed_again(self, error: ErrorInfo, *, counts_as_replay: bool) -> DeadLetterRecord:
        """This record after one more failed write."""
        return replace(
            self,
            error=error,
            attempts=self.attempts + 1,
            replays=self.replays + (1 if counts_as_replay else 0),
            last_failed_at=datetime.now(UTC),
        )


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did: ``replayed`` records committed (``new_rows`` of them were new
    rows; the rest were already in the table), ``still_failing`` kept in the spool,
    ``quarantined`` moved to the quarantine file, ``skipped`` of a kind with no sink."""

    replayed: int = 0
    still_failing: int = 0
    quarantined: int = 0
    new_rows: int = 0
    skipped: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error type -> records failing


def to_line(record: DeadLetterRecord) -> str:
    return json.dumps(record.to_dict(), separators=(",", ":"))


def parse_line(line: str) -> DeadLetterRecord | None:
    """The record of one spool line, or None if the line is not one (a torn write)."""
    try:
        return DeadLetterRecord.from_dict(json.loads(line))
    except (ValueError, KeyError, TypeError):
        return None
