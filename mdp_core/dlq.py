"""The dead-letter queue: a local, durable spool of records the database did not take.

Layout under ``directory`` (default ``get_settings().dlq_dir``, i.e. ``$MDP_HOME/dlq``):

- ``seg-<time>-<pid>-<n>.jsonl``: append-only JSON-lines segments, rotated by size; one
  record per item (see ``DeadLetterRecord``).
- ``replaying-seg-...jsonl``: segments claimed by a replay or purge in progress (or left
  by one that died); they still count, and the next replay takes them again.
- ``quarantine.jsonl``: records that kept failing in replay (poison); kept for a human.
- ``corrupt.jsonl``: lines that could not be parsed (a torn write), kept verbatim.
- ``.lock`` (short critical sections: append, claim, rename) and ``.replay.lock`` (one
  replay or purge at a time) are ``fcntl.flock`` locks, so one writing process and a replay
  in another process can share the directory.

Guarantees:

- ``put`` returns only after the records are written, flushed and ``fsync``'d (and the
  directory fsync'd when it created a segment): an item counts as dead-lettered only then.
  A failed write is truncated away, so a segment never holds half a record of ours.
- ``replay`` never loses a record, even if the process dies in the middle: committed
  records leave the spool only after the rewritten segment (the records still failing) is
  durably in place; a crash can at worst leave duplicates (same record id; everywhere the
  copy in the later segment, the newer one, wins) and re-write rows that are already in
  the table, which the idempotent upsert absorbs. Replaying an already replayed spool
  writes nothing.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdp_core.errors import Classification, ErrorInfo, classify_error, error_info
from mdp_core.logs import logger
from mdp_core.models import Record, record_from_dict
from mdp_core.settings import get_settings

if TYPE_CHECKING:
    from mdp_core.coordinator import Sink

__all__ = [
    "DeadLetterQueue",
    "DeadLetterRecord",
    "ReplayBusyError",
    "ReplayResult",
]

SEGMENT_PREFIX = "seg-"
CLAIM_PREFIX = "replaying-"
QUARANTINE_FILE = "quarantine.jsonl"
CORRUPT_FILE = "corrupt.jsonl"
_LOCK_FILE = ".lock"
_REPLAY_LOCK_FILE = ".replay.lock"
_counter = itertools.count()


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


def _line(record: DeadLetterRecord) -> str:
    return json.dumps(record.to_dict(), separators=(",", ":"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class DeadLetterQueue:
    """Durable local spool of failed records; see the module docstring.

    ``segment_bytes`` is the size at which the writer starts a new segment; ``fsync=False``
    is for benchmarks only (it gives up durability).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        segment_bytes: int = 16 * 1024 * 1024,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory if directory is not None else get_settings().dlq_dir)
        self.directory = self.directory.expanduser().resolve()
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes {segment_bytes!r}: expected bytes >= 1")
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._active: Path | None = None  # the segment this object appends to
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DeadLetterQueue({str(self.directory)!r})"

    # -- locking and files --------------------------------------------------------------

    def _ensure_dir(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.directory.parent)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Short exclusive section across threads and processes."""
        self._ensure_dir()
        with self._thread_lock, open(self.directory / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _replay_lock(self) -> Iterator[None]:
        self._ensure_dir()
        with open(self.directory / _REPLAY_LOCK_FILE, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ReplayBusyError(
                    f"another replay or purge is running on the DLQ in {self.directory}"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _new_segment_name(self) -> str:
        return f"{SEGMENT_PREFIX}{time.time_ns():020d}-{os.getpid()}-{next(_counter)}.jsonl"

    def _spool_files(self) -> list[Path]:
        """Segments and claimed segments, oldest first."""
        if not self.directory.is_dir():
            return []
        files = [
            p
            for p in self.directory.iterdir()
            if p.suffix == ".jsonl"
            and (p.name.startswith(SEGMENT_PREFIX) or p.name.startswith(CLAIM_PREFIX))
        ]
        return sorted(files, key=lambda p: p.name.removeprefix(CLAIM_PREFIX))

    def _append(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # never leave half a record behind
                raise
        finally:
            os.close(fd)

    def _write_new(self, name: str, data: bytes) -> Path:
        """Write a whole file durably: temp file, fsync, rename, fsync the directory."""
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self.fsync:
            _fsync_dir(self.directory)
        return final

    @staticmethod
    def _read(path: Path) -> tuple[list[DeadLetterRecord], list[str]]:
        """Records of one file, and the lines that could not be parsed."""
        records: list[DeadLetterRecord] = []
        bad: list[str] = []
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return records, bad
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                records.append(DeadLetterRecord.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                bad.append(line)
        return records, bad

    @staticmethod
    def _ids(path: Path) -> Iterator[str]:
        """The record ids of one file, cheaply: no ``DeadLetterRecord`` is built. Lines
        that are not a JSON object with an ``id`` are skipped (as ``_read`` does)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                record_id = str(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue
            yield record_id

    def _latest_copies(self, files: Sequence[Path]) -> dict[str, int]:
        """Record id -> index in ``files`` (spool order) of the file with its latest copy.

        An id is in two files only after a crash in ``_settle`` (the rewritten segment was
        written, the claimed one not yet removed); the later file holds the newer copy (more
        attempts, a later ``last_failed_at``). Everywhere the later copy wins."""
        latest: dict[str, int] = {}
        for index, path in enumerate(files):
            for record_id in self._ids(path):
                latest[record_id] = index
        return latest

    # -- writing ------------------------------------------------------------------------

    def put(
        self,
        items: Iterable[Record],
        error: BaseException | ErrorInfo,
        attempts: int,
        kind: str | None = None,
        *,
        stream: str = "",
        first_failed_at: datetime | None = None,
    ) -> int:
        """Spool ``items`` with their ``error``; return how many records were written.

        Returns only once the records are fsync'd: then, and not before, they count as
        dead-lettered. ``kind`` defaults to each item's own ``kind``."""
        now = datetime.now(UTC)
        info = error_info(error)
        lines = [
            _line(
                DeadLetterRecord(
                    id=uuid.uuid4().hex,
                    kind=kind or item.kind,
                    item=item.to_dict(),
                    error=info,
                    attempts=attempts,
                    first_failed_at=first_failed_at or now,
                    last_failed_at=now,
                    stream=stream,
                    source=getattr(item, "source", "") or "",
                )
            )
            for item in items
        ]
        if lines:
            self._put_lines(lines)
        return len(lines)

    def _put_lines(self, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock():
            path = self._active
            if path is None or not path.exists() or path.stat().st_size >= self.segment_bytes:
                path = self.directory / self._new_segment_name()
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                if self.fsync:
                    _fsync_dir(self.directory)
                self._active = path
            self._append(path, data)

    # -- reading ------------------------------------------------------------------------

    def _records(self, files: Iterable[Path]) -> dict[str, DeadLetterRecord]:
        by_id: dict[str, DeadLetterRecord] = {}
        for path in files:
            records, _ = self._read(path)
            for record in records:
                by_id[record.id] = record  # a later copy (after a crash) wins
        return by_id

    def list(
        self,
        *,
        kind: str | None = None,
        stream: str | None = None,
        error_type: str | None = None,
        sqlstate: str | None = None,
        quarantined: bool = False,
        limit: int | None = None,
    ) -> builtins.list[DeadLetterRecord]:
        """Records in the spool (or the quarantine), oldest first, filtered."""
        files = [self.directory / QUARANTINE_FILE] if quarantined else self._spool_files()
        out: builtins.list[DeadLetterRecord] = []
        for record in self._records(files).values():
            if kind is not None and record.kind != kind:
                continue
            if stream is not None and record.stream != stream:
                continue
            if error_type is not None and record.error.type != error_type:
                continue
            if sqlstate is not None and record.error.sqlstate != sqlstate:
                continue
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
        return out

    def count(self, *, quarantined: bool = False) -> int:
        """How many records the spool (or the quarantine) holds (distinct ids, as ``list``).

        Cheap enough to poll: it parses each line's JSON for its id and builds nothing."""
        files = [self.directory / QUARANTINE_FILE] if quarantined else self._spool_files()
        return len({record_id for path in files for record_id in self._ids(path)})

    # -- claiming and rewriting (replay, purge) -------------------------------------------

    def _claim(self) -> builtins.list[Path]:
        """Take every segment for a replay: the writer will start a new one."""
        claimed: builtins.list[Path] = []
        with self._lock():
            for path in self._spool_files():
                if path.name.startswith(CLAIM_PREFIX):
                    claimed.append(path)  # left by a replay that died
                else:
                    target = path.with_name(CLAIM_PREFIX + path.name)
                    os.replace(path, target)
                    claimed.append(target)
            if self.fsync and claimed:
                _fsync_dir(self.directory)
        return claimed

    def _settle(
        self,
        claimed: Path,
        keep: builtins.list[DeadLetterRecord],
        quarantine: builtins.list[DeadLetterRecord],
        corrupt: builtins.list[str],
    ) -> None:
        """Replace a claimed segment by ``keep``; append ``quarantine`` and ``corrupt``.

        Order matters for crash safety: everything that must survive is durable before the
        claimed segment is removed."""
        if quarantine:
            data = "".join(_line(r) + "\n" for r in quarantine).encode("utf-8")
            with self._lock():
                self._append(self.directory / QUARANTINE_FILE, data)
        if corrupt:
            with self._lock():
                self._append(
                    self.directory / CORRUPT_FILE, "".join(x + "\n" for x in corrupt).encode()
                )
        with self._lock():
            if keep:
                data = "".join(_line(r) + "\n" for r in keep).encode("utf-8")
                self._write_new(self._new_segment_name(), data)
            claimed.unlink(missing_ok=True)
            if self.fsync:
                _fsync_dir(self.directory)

    def _unclaim(self, claimed: Path) -> None:
        """Give back a claimed segment untouched."""
        with self._lock():
            os.replace(claimed, claimed.with_name(claimed.name.removeprefix(CLAIM_PREFIX)))
            if self.fsync:
                _fsync_dir(self.directory)

    # -- replay -------------------------------------------------------------------------

    async def replay(
        self,
        sink: Sink[Any] | Sequence[Sink[Any]],
        *,
        max_attempts: int = 3,
        batch_size: int = 500,
        progress: Callable[[int], object] | None = None,
        classify: Callable[[BaseException], Classification] | None = None,
    ) -> ReplayResult:
        """Write the spooled records through ``sink`` (or one sink per kind) again.

        Records that commit leave the spool; records that fail stay with ``attempts + 1``
        and their new error; a record that failed for a data (or unknown) reason in
        ``max_attempts`` replays moves to the quarantine. A batch failing with a data error
        is bisected, so one bad record does not hold back the others. On an infrastructure
        error (the database went away) the replay stops early and keeps the rest as it is.
        ``progress(n)`` is called after each batch with the number of records it handled.
        Raises ``ReplayBusyError`` if another replay or purge is running.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts!r}: expected an int >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: expected an int >= 1")
        sinks = {s.kind: s for s in (sink if isinstance(sink, Sequence) else [sink])}
        classify = classify or classify_error
        totals = _Totals()
        with self._replay_lock():
            stopped = False
            claims = self._claim()
            latest = self._latest_copies(claims)
            for index, claimed in enumerate(claims):
                records, corrupt = self._read(claimed)
                fresh = _latest_of(records, latest, index)
                todo = [r for r in fresh if r.kind in sinks]
                if not records and not corrupt:  # an empty segment: nothing to keep
                    self._settle(claimed, [], [], [])
                    continue
                if stopped or (not todo and not corrupt and len(fresh) == len(records)):
                    self._unclaim(claimed)
                    totals.skipped += len(fresh) - len(todo)
                    totals.still_failing += len(todo)
                    continue
                keep = [r for r in fresh if r.kind not in sinks]
                totals.skipped += len(keep)
                quarantine: builtins.list[DeadLetterRecord] = []
                for kind in dict.fromkeys(r.kind for r in todo):
                    of_kind = [r for r in todo if r.kind == kind]
                    for start in range(0, len(of_kind), batch_size):
                        batch = of_kind[start : start + batch_size]
                        if stopped:
                            keep.extend(batch)
                            continue
                        failed, stopped = await _replay_batch(sinks[kind], batch, classify, totals)
                        for record in failed:
                            (quarantine if record.replays >= max_attempts else keep).append(record)
                        if progress is not None:
                            progress(len(batch))
                self._settle(claimed, keep, quarantine, corrupt)
                totals.quarantined += len(quarantine)
                for record in keep:
                    if record.kind in sinks:
                        totals.still_failing += 1
                        totals.errors[record.error.type] = (
                            totals.errors.get(record.error.type, 0) + 1
                        )
        result = totals.result()
        logger.info(
            "DLQ replay in {}: {} replayed ({} new rows), {} still failing, {} quarantined",
            self.directory,
            result.replayed,
            result.new_rows,
            result.still_failing,
            result.quarantined,
        )
        return result

    # -- purge --------------------------------------------------------------------------

    def purge(
        self,
        *,
        quarantined_only: bool = False,
        older_than: timedelta | datetime | None = None,
    ) -> int:
        """Delete records for good: all of them, only the quarantined ones, and/or only those
        whose last failure is older than ``older_than`` (an age or a UTC time). Returns how
        many were deleted. Raises ``ReplayBusyError`` while a replay is running."""
        if isinstance(older_than, timedelta):
            cutoff: datetime | None = datetime.now(UTC) - older_than
        else:
            cutoff = older_than
        if cutoff is not None and cutoff.tzinfo is None:
            raise ValueError(f"older_than {cutoff!r} is naive: expected a timezone-aware time")

        def doomed(record: DeadLetterRecord) -> bool:
            return cutoff is None or record.last_failed_at < cutoff

        deleted = 0
        with self._replay_lock():
            quarantine = self.directory / QUARANTINE_FILE
            if quarantine.exists():
                records, corrupt = self._read(quarantine)
                keep = [r for r in records if not doomed(r)]
                deleted += len(records) - len(keep)
                with self._lock():
                    data = "".join(_line(r) + "\n" for r in keep) + "".join(
                        x + "\n" for x in corrupt
                    )
                    if data:
                        self._write_new(QUARANTINE_FILE, data.encode("utf-8"))
                    else:
                        quarantine.unlink()
            if not quarantined_only:
                claims = self._claim()
                latest = self._latest_copies(claims)
                for index, claimed in enumerate(claims):
                    records, corrupt = self._read(claimed)
                    fresh = _latest_of(records, latest, index)
                    keep = [r for r in fresh if not doomed(r)]
                    deleted += len(fresh) - len(keep)
                    self._settle(claimed, keep, [], corrupt)
        logger.info("DLQ purge in {}: {} records deleted", self.directory, deleted)
        return deleted


@dataclass
class _Totals:
    replayed: int = 0
    still_failing: int = 0
    quarantined: int = 0
    new_rows: int = 0
    skipped: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def result(self) -> ReplayResult:
        return ReplayResult(
            replayed=self.replayed,
            still_failing=self.still_failing,
            quarantined=self.quarantined,
            new_rows=self.new_rows,
            skipped=self.skipped,
            errors=dict(self.errors),
        )


def _latest_of(
    records: builtins.list[DeadLetterRecord], latest: dict[str, int], index: int
) -> builtins.list[DeadLetterRecord]:
    """The records of file ``index`` that are their id's latest copy (see
    ``_latest_copies``), one per id; superseded copies are left out."""
    return builtins.list({r.id: r for r in records if latest.get(r.id, index) == index}.values())


async def _replay_batch(
    sink: Sink[Any],
    batch: builtins.list[DeadLetterRecord],
    classify: Callable[[BaseException], Classification],
    totals: _Totals,
) -> tuple[builtins.list[DeadLetterRecord], bool]:
    """Write one batch of records of one kind; return the records that failed (updated)
    and whether an infrastructure error says the replay should stop."""
    failed: builtins.list[DeadLetterRecord] = []
    items: builtins.list[tuple[DeadLetterRecord, Record]] = []
    for record in batch:
        try:
            items.append((record, record.record()))
        except (ValueError, TypeError, KeyError) as exc:  # it can never be written
            failed.append(record.failed_again(error_info(exc), counts_as_replay=True))
    stop = await _write_isolating(sink, items, classify, totals, failed)
    return failed, stop


async def _write_isolating(
    sink: Sink[Any],
    items: builtins.list[tuple[DeadLetterRecord, Record]],
    classify: Callable[[BaseException], Classification],
    totals: _Totals,
    failed: builtins.list[DeadLetterRecord],
) -> bool:
    """Write ``items``; bisect on data errors so only the bad records fail. Returns True
    when an infrastructure error stopped it (the unwritten records are in ``failed``)."""
    if not items:
        return False
    try:
        new_rows = await sink.write([item for _, item in items])
    except Exception as exc:
        kind = classify(exc)
        if kind == "permanent" and len(items) > 1:
            mid = len(items) // 2
            if await _write_isolating(sink, items[:mid], classify, totals, failed):
                failed.extend(r for r, _ in items[mid:])  # not tried: kept as they are
                return True
            return await _write_isolating(sink, items[mid:], classify, totals, failed)
        info = error_info(exc)
        failed.extend(r.failed_again(info, counts_as_replay=kind != "transient") for r, _ in items)
        return kind == "transient"
    totals.replayed += len(items)
    totals.new_rows += new_rows
    return False
