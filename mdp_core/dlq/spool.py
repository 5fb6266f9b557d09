"""``DeadLetterQueue``: a local, durable spool of records the database did not take.

Layout under ``directory`` (default ``get_settings().dlq_dir``, i.e. ``$MDP_HOME/dlq``):

- ``seg-<time>-<pid>-<n>.jsonl``: append-only JSON-lines segments, rotated by size; one
  record per item (see ``DeadLetterRecord``).
- ``replaying-seg-...jsonl``: segments claimed by a replay or purge in progress (or left
  by one that died); they still count, and the next replay takes them again.
- ``.*.rewrite`` / ``.*.quarantine``: a replay's work files for one claimed segment (a
  dead replay's leftovers are removed by the next one).
- ``quarantine.jsonl``: records that kept failing in replay (poison); kept for a human.
- ``corrupt.jsonl``: lines that could not be parsed (a torn write), kept verbatim.
- ``.lock`` (short critical sections: append, claim, rename) and ``.replay.lock`` (one
  replay or purge at a time) are ``fcntl.flock`` locks, so one writing process and a replay
  in another process can share the directory.

Guarantees:

- ``put`` returns only after the records are written, flushed and ``fsync``'d (and the
  directory fsync'd when it created a segment): an item counts as dead-lettered only then.
  A failed write is truncated away, so a segment never holds half a record of ours.
- ``replay`` never loses a record, even if the process dies in the middle: it streams a
  claimed segment in batches, writes the records still failing to a work file, and only
  then replaces the claimed segment by that file in one atomic rename; a crash before the
  rename leaves the claimed segment whole (its committed rows are written again next time,
  which the idempotent upsert absorbs), never a record in two segments. Records moving to
  the quarantine are appended there first, so a crash at that moment can leave one of them
  both quarantined and pending, never neither. Replaying an already replayed spool writes
  nothing.
- ``count``, ``iter`` / ``list``, ``replay`` and ``purge`` read the spool line by line:
  their memory does not grow with its size.
- Files are created ``0600`` and the directory ``0700``: the spool holds market data and
  error messages that are nobody else's business.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import itertools
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mdp_core.dlq.files import (
    CLAIM_PREFIX,
    CORRUPT_FILE,
    DIR_MODE,
    FILE_MODE,
    LOCK_FILE,
    QUARANTINE_FILE,
    RECORD_START,
    REPLAY_LOCK_FILE,
    SEGMENT_PREFIX,
    WORK_SUFFIXES,
    fsync_dir,
    lines,
    private,
    write_all,
)
from mdp_core.dlq.records import (
    DeadLetterRecord,
    ReplayBusyError,
    ReplayResult,
    parse_line,
    to_line,
)
from mdp_core.dlq.replay import Replay
from mdp_core.errors import Classification, ErrorInfo, classify_error, error_info
from mdp_core.logs import logger
from mdp_core.models import Record
from mdp_core.settings import get_settings

if TYPE_CHECKING:
    from mdp_core.sink import Sink

__all__ = ["DeadLetterQueue"]

_counter = itertools.count()


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
        self._dir_checked = False

    def __repr__(self) -> str:
        return f"DeadLetterQueue({str(self.directory)!r})"

    # -- locking and files --------------------------------------------------------------

    def _ensure_dir(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            os.chmod(self.directory, DIR_MODE)  # mkdir's mode is filtered by the umask
            fsync_dir(self.directory.parent)
        elif not self._dir_checked:
            mode = stat.S_IMODE(self.directory.stat().st_mode)
            if mode & 0o077:
                with contextlib.suppress(OSError):  # not ours to change: leave it
                    os.chmod(self.directory, DIR_MODE)
        self._dir_checked = True

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Short exclusive section across threads and processes."""
        self._ensure_dir()
        with self._thread_lock, open(self.directory / LOCK_FILE, "a", opener=private) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _replay_lock(self) -> Iterator[None]:
        self._ensure_dir()
        with open(self.directory / REPLAY_LOCK_FILE, "a", opener=private) as lock:
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
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            try:
                write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # never leave half a record behind
                raise
        finally:
            os.close(fd)

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
            to_line(
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
            self._putlines(lines)
        return len(lines)

    def _putlines(self, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock():
            path = self._active
            if path is None or not path.exists() or path.stat().st_size >= self.segment_bytes:
                path = self.directory / self._new_segment_name()
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
                if self.fsync:
                    fsync_dir(self.directory)
                self._active = path
            self._append(path, data)

    # -- reading ------------------------------------------------------------------------

    def iter(
        self,
        *,
        kind: str | None = None,
        stream: str | None = None,
        error_type: str | None = None,
        sqlstate: str | None = None,
        quarantined: bool = False,
    ) -> Iterator[DeadLetterRecord]:
        """Records in the spool (or the quarantine), oldest first, filtered; read lazily."""
        files = [self.directory / QUARANTINE_FILE] if quarantined else self._spool_files()
        for path in files:
            for line in lines(path):
                record = parse_line(line)
                if record is None:
                    continue
                if kind is not None and record.kind != kind:
                    continue
                if stream is not None and record.stream != stream:
                    continue
                if error_type is not None and record.error.type != error_type:
                    continue
                if sqlstate is not None and record.error.sqlstate != sqlstate:
                    continue
                yield record

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
        """The first ``limit`` (default: all) records of ``iter`` with the same filters."""
        records = self.iter(
            kind=kind,
            stream=stream,
            error_type=error_type,
            sqlstate=sqlstate,
            quarantined=quarantined,
        )
        return builtins.list(itertools.islice(records, limit))

    def count(self, *, quarantined: bool = False) -> int:
        """How many records the spool (or the quarantine) holds.

        Cheap enough to poll: it counts complete record lines and parses nothing."""
        files = [self.directory / QUARANTINE_FILE] if quarantined else self._spool_files()
        total = 0
        for path in files:
            try:
                with open(path, "rb") as f:
                    total += sum(
                        1 for line in f if line.startswith(RECORD_START) and line.endswith(b"}\n")
                    )
            except FileNotFoundError:
                continue
        return total

    # -- claiming and rewriting (replay, purge) -------------------------------------------

    def _claim(self) -> builtins.list[Path]:
        """Take every segment for a replay: the writer will start a new one. Work files a
        dead replay left behind are removed (its claimed segments are taken again)."""
        claimed: builtins.list[Path] = []
        with self._lock():
            for path in self.directory.iterdir():
                if path.name.startswith(".") and path.name.endswith(WORK_SUFFIXES):
                    path.unlink(missing_ok=True)
            for path in self._spool_files():
                if path.name.startswith(CLAIM_PREFIX):
                    claimed.append(path)  # left by a replay that died
                else:
                    target = path.with_name(CLAIM_PREFIX + path.name)
                    os.replace(path, target)
                    claimed.append(target)
            if self.fsync and claimed:
                fsync_dir(self.directory)
        return claimed

    def _work_file(self, claimed: Path, suffix: str) -> IO[str]:
        path = self.directory / f".{claimed.name}{suffix}"
        return open(path, "w", encoding="utf-8", opener=private)

    def _settle(
        self, claimed: Path, keep: IO[str], quarantine: IO[str], final: Path | None = None
    ) -> None:
        """Finish one claimed segment: append the work file ``quarantine`` to the
        quarantine, then atomically replace the claimed segment by ``keep`` (the records
        still pending) and give it its unclaimed name (or ``final``), or remove it if
        ``keep`` is empty.

        Order matters for crash safety: everything that must survive is durable before the
        claimed segment changes."""
        for work in (keep, quarantine):
            work.flush()
            if self.fsync:
                os.fsync(work.fileno())
        keep_path, quarantine_path = Path(keep.name), Path(quarantine.name)
        if quarantine.tell():
            target = self.directory / QUARANTINE_FILE
            with (
                self._lock(),
                open(quarantine_path, "rb") as src,
                open(target, "ab", opener=private) as dst,
            ):
                shutil.copyfileobj(src, dst)
                dst.flush()
                if self.fsync:
                    os.fsync(dst.fileno())
        quarantine_path.unlink(missing_ok=True)
        final = final or claimed.with_name(claimed.name.removeprefix(CLAIM_PREFIX))
        with self._lock():
            if keep.tell():
                os.replace(keep_path, claimed)
                if final != claimed:
                    os.replace(claimed, final)
            else:
                keep_path.unlink(missing_ok=True)
                claimed.unlink(missing_ok=True)
            if self.fsync:
                fsync_dir(self.directory)

    def _unclaim(self, claimed: Path) -> None:
        """Give back a claimed segment untouched."""
        with self._lock():
            os.replace(claimed, claimed.with_name(claimed.name.removeprefix(CLAIM_PREFIX)))
            if self.fsync:
                fsync_dir(self.directory)

    def _append_corrupt(self, lines: builtins.list[str]) -> None:
        if lines:
            with self._lock():
                self._append(
                    self.directory / CORRUPT_FILE, "".join(x + "\n" for x in lines).encode()
                )

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
        and their new error; a record that failed for a non-transient reason in
        ``max_attempts`` replays moves to the quarantine. A batch failing with a
        non-transient error is bisected, so one bad record does not hold back the others.
        On a transient error (the database went away) the replay stops early and keeps the
        rest as it is. ``progress(n)`` is called after each batch with the number of
        records it handled. Raises ``ReplayBusyError`` if another replay or purge is
        running. Memory: one batch, whatever the size of the spool.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts!r}: expected an int >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: expected an int >= 1")
        sinks = {s.kind: s for s in (sink if isinstance(sink, Sequence) else [sink])}
        run = Replay(sinks, classify or classify_error, max_attempts, batch_size, progress)
        with self._replay_lock():
            for claimed in self._claim():
                if run.stopped:
                    run.count_untouched(claimed)
                    self._unclaim(claimed)
                    continue
                with (
                    self._work_file(claimed, ".rewrite") as keep,
                    self._work_file(claimed, ".quarantine") as quarantine,
                ):
                    corrupt = await run.segment(lines(claimed), keep, quarantine)
                    self._append_corrupt(corrupt)
                    self._settle(claimed, keep, quarantine)
        result = run.totals.result()
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

        deleted = 0

        def rewrite(lines: Iterable[str], keep: IO[str]) -> None:
            nonlocal deleted
            for line in lines:
                record = parse_line(line)
                if record is not None and (cutoff is None or record.last_failed_at < cutoff):
                    deleted += 1
                else:
                    keep.write(line + "\n")  # kept, or not a record: left for a human

        with self._replay_lock():
            quarantine = self.directory / QUARANTINE_FILE
            if quarantine.exists():  # only replays append to it, and they wait for this
                with (
                    self._work_file(quarantine, ".rewrite") as keep,
                    self._work_file(quarantine, ".quarantine") as empty,
                ):
                    rewrite(lines(quarantine), keep)
                    self._settle(quarantine, keep, empty, final=quarantine)
            if not quarantined_only:
                for claimed in self._claim():
                    with (
                        self._work_file(claimed, ".rewrite") as keep,
                        self._work_file(claimed, ".quarantine") as empty,
                    ):
                        rewrite(lines(claimed), keep)
                        self._settle(claimed, keep, empty)
        logger.info("DLQ purge in {}: {} records deleted", self.directory, deleted)
        return deleted
