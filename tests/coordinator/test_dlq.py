"""DeadLetterQueue: exact records, durability (fsync), torn writes, replay (commit, keep
with attempts + 1, quarantine), crash mid-replay, purge, locking across processes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from mdp_core.dlq import DeadLetterQueue, ReplayBusyError
from mdp_core.dlq.files import CLAIM_PREFIX, CORRUPT_FILE, QUARANTINE_FILE
from mdp_core.models import Quote
from tests.coordinator.helpers import MemorySink, bars, quotes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dlq(tmp_path: Path) -> DeadLetterQueue:
    return DeadLetterQueue(tmp_path / "dlq")


def test_default_directory_is_under_mdp_home(tmp_path: Path) -> None:
    assert DeadLetterQueue().directory == (tmp_path / "mdp-home" / "dlq").resolve()


def test_records_rebuild_the_exact_quotes_and_bars(dlq: DeadLetterQueue) -> None:
    qs, bs = quotes(3), bars(2)
    error = asyncpg.CheckViolationError('violates check constraint "x"')
    assert dlq.put(qs, error, 2, stream="s") == 3
    assert dlq.put(bs, TimeoutError("slow"), 5, kind="bar") == 2
    records = dlq.list()
    assert [r.record() for r in records] == [*qs, *bs]
    first = records[0]
    assert (first.kind, first.stream, first.source, first.attempts) == ("quote", "s", "test", 2)
    assert (first.error.type, first.error.sqlstate) == ("CheckViolationError", "23514")
    assert first.first_failed_at <= first.last_failed_at
    assert first.first_failed_at.tzinfo is not None
    assert len({r.id for r in records}) == 5
    assert dlq.count() == 5
    assert [r.record() for r in dlq.list(kind="bar")] == bs
    assert len(dlq.list(error_type="TimeoutError")) == 2
    assert len(dlq.list(sqlstate="23514", limit=2)) == 2
    assert dlq.list(stream="other") == []
    line = json.loads(next(dlq.directory.glob("seg-*.jsonl")).read_text().splitlines()[0])
    assert set(line) >= {"id", "kind", "item", "error", "attempts", "first_failed_at",
                         "last_failed_at", "stream", "source"}  # fmt: skip


def test_put_fsyncs_the_segment_and_the_directory(
    dlq: DeadLetterQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    dlq.put(quotes(2), RuntimeError("x"), 1)
    segment = next(dlq.directory.glob("seg-*.jsonl"))
    assert str(dlq.directory) in synced  # the new segment's directory entry
    assert str(segment) in synced  # the records themselves
    synced.clear()
    dlq.put(quotes(1, start=5), RuntimeError("x"), 1)
    assert synced == [str(segment)]  # appending: the data only


def test_segments_rotate_by_size(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path / "dlq", segment_bytes=2_000)
    items = quotes(40)
    for q in items:
        dlq.put([q], RuntimeError("x"), 1)
    assert len(list(dlq.directory.glob("seg-*.jsonl"))) > 3
    assert [r.record() for r in dlq.list()] == items  # in order across segments


def test_a_failed_write_leaves_no_partial_record(
    dlq: DeadLetterQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    dlq.put(quotes(2), RuntimeError("x"), 1)
    segment = next(dlq.directory.glob("seg-*.jsonl"))
    size = segment.stat().st_size
    real_write = os.write

    def half_then_fail(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        dlq.put(quotes(3, start=10), RuntimeError("x"), 1)
    monkeypatch.setattr(os, "write", real_write)
    assert segment.stat().st_size == size
    assert dlq.count() == 2


def test_corrupt_lines_are_skipped_when_reading(dlq: DeadLetterQueue) -> None:
    dlq.put(quotes(2), RuntimeError("x"), 1)
    segment = next(dlq.directory.glob("seg-*.jsonl"))
    with open(segment, "a") as f:
        f.write('{"id": "torn", "kind": "quo\n')
    assert dlq.count() == 2


async def test_replay_commits_and_a_second_replay_adds_nothing(dlq: DeadLetterQueue) -> None:
    items = quotes(1_000)
    dlq.put(items, TimeoutError(), 5)
    sink = MemorySink()
    progress: list[int] = []
    result = await dlq.replay(sink, batch_size=300, progress=progress.append)
    assert (result.replayed, result.new_rows, result.still_failing, result.quarantined) == (
        1_000, 1_000, 0, 0,
    )  # fmt: skip
    assert progress == [300, 300, 300, 100]
    assert set(sink.rows) == {q.key for q in items}
    assert dlq.count() == 0
    again = await dlq.replay(sink)
    assert (again.replayed, again.new_rows) == (0, 0)
    assert sink.calls == 4


async def test_replay_bisects_and_quarantines_after_the_limit(dlq: DeadLetterQueue) -> None:
    items = quotes(100)
    bad = {items[10].key, items[77].key}
    dlq.put(items, TimeoutError("db down"), 5)
    sink = MemorySink(poison=bad)
    first = await dlq.replay(sink, max_attempts=2)
    assert (first.replayed, first.still_failing, first.quarantined) == (98, 2, 0)
    assert first.errors == {"CheckViolationError": 2}
    left = dlq.list()
    assert {r.record().key for r in left} == bad
    assert {(r.attempts, r.replays, r.error.sqlstate) for r in left} == {(6, 1, "23514")}
    second = await dlq.replay(sink, max_attempts=2)
    assert (second.replayed, second.still_failing, second.quarantined) == (0, 0, 2)
    assert dlq.count() == 0
    quarantined = dlq.list(quarantined=True)
    assert {r.record().key for r in quarantined} == bad
    assert {(r.attempts, r.replays) for r in quarantined} == {(7, 2)}
    assert dlq.count(quarantined=True) == 2


async def test_invalid_records_cannot_be_rebuilt_and_end_in_quarantine(
    dlq: DeadLetterQueue,
) -> None:
    q = quotes(1)[0]
    object.__setattr__(q, "bid", -1.0)
    dlq.put([q], asyncpg.CheckViolationError("bid"), 1)
    result = await dlq.replay(MemorySink(), max_attempts=1)
    assert result.quarantined == 1
    record = dlq.list(quarantined=True)[0]
    assert record.error.type == "ValueError" and "bid" in record.error.message


async def test_replay_stops_at_an_infrastructure_error_and_never_quarantines_for_it(
    dlq: DeadLetterQueue,
) -> None:
    items = quotes(50)
    dlq.put(items, TimeoutError(), 5)
    sink = MemorySink(fault=lambda n, b: ConnectionRefusedError(111, "refused"))
    for _ in range(4):
        result = await dlq.replay(sink, batch_size=10, max_attempts=1)
        assert (result.replayed, result.still_failing, result.quarantined) == (0, 50, 0)
    assert sink.calls == 4  # one attempt per replay, then it stopped
    records = dlq.list()
    assert len(records) == 50 and dlq.count(quarantined=True) == 0
    tried = [r for r in records if r.attempts > 5]
    assert len(tried) == 10 and {r.replays for r in records} == {0}
    assert {r.error.type for r in tried} == {"ConnectionRefusedError"}
    ok = await dlq.replay(MemorySink())
    assert ok.replayed == 50 and dlq.count() == 0


async def test_replay_routes_records_by_kind(dlq: DeadLetterQueue) -> None:
    qs, bs = quotes(5), bars(4)
    dlq.put(qs, TimeoutError(), 1)
    dlq.put(bs, TimeoutError(), 1)
    quote_sink = MemorySink("quote")
    only_quotes = await dlq.replay(quote_sink)
    assert (only_quotes.replayed, only_quotes.skipped) == (5, 4)
    assert [r.record() for r in dlq.list()] == bs
    bar_sink = MemorySink("bar")
    both = await dlq.replay([MemorySink("quote"), bar_sink])
    assert both.replayed == 4 and set(bar_sink.rows) == {b.key for b in bs}
    assert dlq.count() == 0


async def test_crash_in_the_middle_of_a_replay_loses_nothing(dlq: DeadLetterQueue) -> None:
    items = quotes(1_000)
    dlq.put(items[:500], TimeoutError(), 5)
    dlq.put(items[500:], TimeoutError(), 5)
    sink = MemorySink()

    def crash(n: int) -> None:
        if len(sink.rows) >= 300:
            raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        await dlq.replay(sink, batch_size=100, progress=crash)
    assert 0 < len(sink.rows) < 1_000
    assert list(dlq.directory.glob(CLAIM_PREFIX + "*"))  # claimed segments left behind
    assert {r.record().key for r in dlq.list()} == {q.key for q in items}  # nothing lost
    result = await dlq.replay(sink)
    assert result.replayed == 1_000 and result.still_failing == 0
    assert set(sink.rows) == {q.key for q in items}
    assert dlq.count() == 0 and not list(dlq.directory.glob("*.jsonl"))


@pytest.mark.parametrize("step", ["replace", "unlink", "copyfileobj", "fsync"])
@pytest.mark.parametrize("nth", [1, 2, 3])
async def test_a_replay_that_dies_at_any_step_loses_and_duplicates_nothing(
    dlq: DeadLetterQueue, monkeypatch: pytest.MonkeyPatch, step: str, nth: int
) -> None:
    """The process dies at the ``nth`` call of one file operation of a replay that commits
    some records, keeps one failing and quarantines another: afterwards every record is in
    exactly one place (table, spool or quarantine), at worst a quarantined one is still
    pending too; a second replay finishes the job."""
    items = quotes(30)
    dlq.put(items[:15], TimeoutError(), 1)
    dlq.put(items[15:], TimeoutError(), 1)
    bad, worse = items[3].key, items[20].key
    sink = MemorySink(poison={bad, worse})
    [worst] = [r for r in dlq.list() if r.record().key == worse]
    _bump_replays(dlq, worst.id, 4)  # one more failing replay sends it to the quarantine
    target = {"replace": os, "unlink": Path, "copyfileobj": shutil, "fsync": os}[step]
    real = getattr(target, step)
    calls = {"n": 0}

    def dying(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == nth:
            raise KeyboardInterrupt  # the process dies here
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(target, step, dying)
        try:
            await dlq.replay(sink, max_attempts=5)
        except KeyboardInterrupt:
            pass
    pending = [r.record().key for r in dlq.list()]
    quarantined = [r.record().key for r in dlq.list(quarantined=True)]
    assert len(pending) == len(set(pending)) and len(quarantined) <= 1
    assert set(pending) | set(quarantined) | set(sink.rows) == {q.key for q in items}
    result = await dlq.replay(sink, max_attempts=5)
    pending = [r.record().key for r in dlq.list()]
    quarantined = [r.record().key for r in dlq.list(quarantined=True)]
    assert pending == [bad] and worse in quarantined
    assert set(sink.rows) == {q.key for q in items} - {bad, worse}
    assert result.still_failing == 1 and dlq.count() == 1


def _bump_replays(dlq: DeadLetterQueue, record_id: str, replays: int) -> None:
    """Rewrite the spool so record ``record_id`` has failed ``replays`` replays already."""
    for path in dlq.directory.glob("seg-*.jsonl"):
        lines = path.read_text().splitlines()
        out = []
        for line in lines:
            data = json.loads(line)
            if data["id"] == record_id:
                data["replays"] = replays
            out.append(json.dumps(data, separators=(",", ":")))
        path.write_text("".join(x + "\n" for x in out))


async def test_replay_keeps_corrupt_lines(dlq: DeadLetterQueue) -> None:
    dlq.put(quotes(2), RuntimeError("x"), 1)
    segment = next(dlq.directory.glob("seg-*.jsonl"))
    with open(segment, "a") as f:
        f.write("not json at all\n")
    result = await dlq.replay(MemorySink())
    assert result.replayed == 2
    assert (dlq.directory / CORRUPT_FILE).read_text() == "not json at all\n"


async def test_writes_during_a_replay_are_not_lost(dlq: DeadLetterQueue) -> None:
    dlq.put(quotes(10), TimeoutError(), 1)
    late = quotes(5, start=100)

    class WritingSink(MemorySink):
        async def write(self, batch: Sequence[Quote]) -> int:
            dlq.put(late, TimeoutError(), 1)  # the coordinator spools meanwhile
            return await super().write(batch)

    result = await dlq.replay(WritingSink(), batch_size=100)
    assert result.replayed == 10
    assert [r.record() for r in dlq.list()] == late


async def test_one_replay_at_a_time(dlq: DeadLetterQueue) -> None:
    dlq.put(quotes(1), TimeoutError(), 1)
    with open(dlq.directory / ".replay.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ReplayBusyError, match="another replay"):
            await dlq.replay(MemorySink())
        with pytest.raises(ReplayBusyError):
            dlq.purge()
    assert dlq.count() == 1


async def test_replay_validates_its_arguments(dlq: DeadLetterQueue) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        await dlq.replay(MemorySink(), max_attempts=0)
    with pytest.raises(ValueError, match="batch_size"):
        await dlq.replay(MemorySink(), batch_size=0)


async def test_purge_all_quarantined_and_older_than(dlq: DeadLetterQueue) -> None:
    items = quotes(30)
    q = quotes(1, start=500)[0]
    object.__setattr__(q, "ask", -2.0)
    dlq.put([q], asyncpg.CheckViolationError("ask"), 1)
    await dlq.replay(MemorySink(), max_attempts=1)  # the invalid record is quarantined
    dlq.put(items[:20], TimeoutError(), 1)
    assert dlq.count(quarantined=True) == 1 and dlq.count() == 20
    assert dlq.purge(quarantined_only=True) == 1
    assert dlq.count(quarantined=True) == 0 and dlq.count() == 20
    assert not (dlq.directory / QUARANTINE_FILE).exists()
    assert dlq.purge(older_than=timedelta(hours=1)) == 0
    dlq.put(items[20:], TimeoutError(), 1)
    assert dlq.purge(older_than=datetime.now(UTC) + timedelta(seconds=1)) == 30
    assert dlq.count() == 0
    dlq.put(items, TimeoutError(), 1)
    assert dlq.purge() == 30 and dlq.count() == 0
    with pytest.raises(ValueError, match="naive"):
        dlq.purge(older_than=datetime(2024, 1, 1))


WRITER = textwrap.dedent(
    """
    import sys
    from mdp_core.dlq import DeadLetterQueue
    from tests.coordinator.helpers import quotes
    dlq = DeadLetterQueue(sys.argv[1])
    for q in quotes(int(sys.argv[2]), start=10_000):
        dlq.put([q], TimeoutError("down"), 1)
    """
)


async def test_a_writer_process_and_a_replay_share_the_spool(dlq: DeadLetterQueue) -> None:
    """One process spools record by record while this one replays over and over: every
    record ends in the sink or the spool, none is lost."""
    dlq.put(quotes(200), TimeoutError(), 1)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(dlq.directory), "400"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    sink = MemorySink()
    try:
        while writer.poll() is None:
            await dlq.replay(sink, batch_size=50)
    finally:
        returncode = writer.wait(timeout=60)  # reap it even if a replay failed
    assert returncode == 0
    await dlq.replay(sink)
    expected = {q.key for q in quotes(200)} | {q.key for q in quotes(400, start=10_000)}
    assert set(sink.rows) == expected and dlq.count() == 0


async def test_replay_removes_empty_segments(dlq: DeadLetterQueue) -> None:
    dlq.put(quotes(1), TimeoutError(), 1)
    segment = next(dlq.directory.glob("seg-*.jsonl"))
    segment.write_text("")
    result = await dlq.replay(MemorySink())
    assert result.replayed == 0 and not list(dlq.directory.glob("*.jsonl"))


async def test_count_list_and_replay_stream_through_a_large_spool(tmp_path: Path) -> None:
    """The spool is read line by line: counting it, iterating it and replaying it take
    memory for one batch, not for the spool (here 40,000 records, about 16 MB)."""
    import tracemalloc

    dlq = DeadLetterQueue(tmp_path / "dlq", fsync=False)
    items = quotes(40_000)
    for start in range(0, len(items), 10_000):
        dlq.put(items[start : start + 10_000], TimeoutError(), 1)
    size = sum(p.stat().st_size for p in dlq.directory.glob("seg-*.jsonl"))
    sink = MemorySink()
    sink.rows = _CountingRows()  # the sink keeps no rows: only the spool's memory counts

    tracemalloc.start()
    try:
        assert dlq.count() == 40_000
        counted_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert sum(1 for _ in dlq.iter()) == 40_000
        iter_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        result = await dlq.replay(sink, batch_size=500)
        replay_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.replayed == 40_000 and dlq.count() == 0
    assert size > 12_000_000
    for peak in (counted_peak, iter_peak, replay_peak):
        assert peak < size / 10, (peak, size)  # the old reader held the whole spool


class _CountingRows(dict):  # type: ignore[type-arg]
    """A dict that forgets what is stored in it (MemorySink's table, for a memory test)."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def test_spool_files_are_private(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path / "dlq")
    dlq.put(quotes(3), TimeoutError(), 1)
    assert (dlq.directory.stat().st_mode & 0o777) == 0o700
    files = [p for p in dlq.directory.iterdir() if p.is_file()]
    assert files and all((p.stat().st_mode & 0o777) == 0o600 for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files
    ]
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    DeadLetterQueue(loose).put(quotes(1), TimeoutError(), 1)
    assert (loose.stat().st_mode & 0o777) == 0o700  # an existing directory is tightened
