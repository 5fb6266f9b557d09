"""Replaying the spool: ``Replay`` writes one claimed segment's records back through the
sinks in batches (bisecting a failing batch with ``mdp_core.bisection``, like the write
coordinator), and sorts what stays: still failing (kept) or quarantined."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mdp_core.bisection import Attempt, Bisection, Next
from mdp_core.dlq.files import lines
from mdp_core.dlq.records import DeadLetterRecord, ReplayResult, parse_line, to_line
from mdp_core.errors import Classification, error_info
from mdp_core.models import Record
from mdp_core.sink import Sink

__all__ = ["Replay", "Totals"]


class Replay:
    """One replay's state: which sinks, its counters, whether an outage stopped it."""

    def __init__(
        self,
        sinks: dict[str, Sink[Any]],
        classify: Callable[[BaseException], Classification],
        max_attempts: int,
        batch_size: int,
        progress: Callable[[int], object] | None,
    ) -> None:
        self.sinks = sinks
        self.classify = classify
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.progress = progress
        self.totals = Totals()
        self.stopped = False  # a transient error: keep the rest untouched

    def count_untouched(self, claimed: Path) -> None:
        for line in lines(claimed):
            record = parse_line(line)
            if record is not None:
                self._pending(record)

    async def segment(
        self, lines: Iterable[str], keep: IO[str], quarantine: IO[str]
    ) -> builtins.list[str]:
        """Replay one claimed segment's lines in batches; write what stays to ``keep`` and
        ``quarantine``; return the lines that are not records."""
        corrupt: builtins.list[str] = []
        batch: builtins.list[DeadLetterRecord] = []
        for line in lines:
            record = parse_line(line)
            if record is None:
                corrupt.append(line)
            elif self.stopped or record.kind not in self.sinks:
                keep.write(line + "\n")
                self._pending(record)
            else:
                batch.append(record)
                if len(batch) >= self.batch_size:
                    await self._batch(batch, keep, quarantine)
                    batch = []
        if batch:
            await self._batch(batch, keep, quarantine)
        return corrupt

    async def _batch(
        self, batch: builtins.list[DeadLetterRecord], keep: IO[str], quarantine: IO[str]
    ) -> None:
        for kind in dict.fromkeys(r.kind for r in batch):
            of_kind = [r for r in batch if r.kind == kind]
            failed, stop = await self._write(self.sinks[kind], of_kind)
            self.stopped = self.stopped or stop
            for record in failed:
                if record.replays >= self.max_attempts:
                    quarantine.write(to_line(record) + "\n")
                    self.totals.quarantined += 1
                else:
                    keep.write(to_line(record) + "\n")
                    self._pending(record)
        if self.progress is not None:
            self.progress(len(batch))

    async def _write(
        self, sink: Sink[Any], records: builtins.list[DeadLetterRecord]
    ) -> tuple[builtins.list[DeadLetterRecord], bool]:
        """Write ``records`` (of one kind), bisecting so that only the bad ones fail. Return
        the records that failed (updated) and whether a transient error stopped it (the
        records not tried then are returned as they were)."""
        failed: builtins.list[DeadLetterRecord] = []
        items: builtins.list[tuple[DeadLetterRecord, Record]] = []
        for record in records:
            try:
                items.append((record, record.record()))
            except (ValueError, TypeError, KeyError) as exc:  # it can never be written
                failed.append(record.failed_again(error_info(exc), counts_as_replay=True))
        if not items:
            return failed, False

        async def write(part: builtins.list[tuple[DeadLetterRecord, Record]]) -> Attempt:
            try:
                new_rows = await sink.write([item for _, item in part])
            except Exception as exc:
                transient = self.classify(exc) == "transient"
                return Attempt("transient" if transient else "permanent", 0, exc)
            return Attempt("ok", new_rows)

        async def settle(
            part: builtins.list[tuple[DeadLetterRecord, Record]], attempt: Attempt
        ) -> Next:
            if attempt.outcome == "ok":
                self.totals.replayed += len(part)
                self.totals.new_rows += attempt.new_rows
                return "continue"
            assert attempt.error is not None
            info = error_info(attempt.error)
            transient = attempt.outcome == "transient"
            failed.extend(r.failed_again(info, counts_as_replay=not transient) for r, _ in part)
            return "stop" if transient else "continue"

        bisection = Bisection(items)
        finished = await bisection.run(write, settle)
        failed.extend(r for r, _ in bisection.unresolved())  # not tried: kept as they are
        return failed, not finished

    def _pending(self, record: DeadLetterRecord) -> None:
        if record.kind in self.sinks:
            self.totals.still_failing += 1
            self.totals.errors[record.error.type] = self.totals.errors.get(record.error.type, 0) + 1
        else:
            self.totals.skipped += 1


@dataclass
class Totals:
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
