"""``mdp dlq``: inspect, replay and purge the dead-letter spool."""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import click

from mdp_core.dlq import DeadLetterQueue, DeadLetterRecord, ReplayBusyError, ReplayResult

__all__ = ["dlq"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.I)
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_age(value: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` -> timedelta (``ValueError`` otherwise)."""
    match = _AGE.match(value)
    if match is None:
        raise ValueError(f"invalid age {value!r}: expected a number and s/m/h/d, like 7d or 12h")
    return timedelta(**{_AGE_UNITS[match.group(2).lower()]: float(match.group(1))})


def _age_option(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _queue(directory: Path | None) -> DeadLetterQueue:
    return DeadLetterQueue(directory)


_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="spool directory (default: $MDP_HOME/dlq)",
)


@click.group()
def dlq() -> None:
    """The dead-letter spool: records the database did not take (see `mdp dlq list`)."""


def _summary(records: list[DeadLetterRecord]) -> list[str]:
    counts = Counter(
        (
            r.kind,
            r.stream or "-",
            r.error.type + (f" [{r.error.sqlstate}]" if r.error.sqlstate else ""),
        )
        for r in records
    )
    width = max([len(error) for _, _, error in counts] + [5])
    lines = [f"{'kind':<6} {'stream':<20} {'error':<{width}} {'count':>8}"]
    for (kind, stream, error), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"{kind:<6} {stream:<20} {error:<{width}} {n:>8}")
    return lines


@dlq.command("list")
@_dir_option
@click.option("--kind", type=click.Choice(["quote", "bar"]), help="only this kind")
@click.option("--stream", help="only records of this stream")
@click.option("--error", "error_type", help="only this error class, e.g. CheckViolationError")
@click.option("--quarantined", is_flag=True, help="the quarantine instead of the spool")
@click.option("--records", "show", type=int, default=0, help="also print the first N records")
def list_(
    directory: Path | None,
    kind: str | None,
    stream: str | None,
    error_type: str | None,
    quarantined: bool,
    show: int,
) -> None:
    """Summarise the spool: records by kind, stream and error."""
    queue = _queue(directory)
    records = queue.list(kind=kind, stream=stream, error_type=error_type, quarantined=quarantined)
    where = "quarantine" if quarantined else "spool"
    click.echo(f"{len(records)} records in the {where} at {queue.directory}")
    if not records:
        return
    for line in _summary(records):
        click.echo(line)
    for record in records[: max(show, 0)]:
        item = record.item
        click.echo(
            f"{record.id} {record.kind} {item.get('symbol')} {item.get('ts')} "
            f"attempts={record.attempts} last={record.last_failed_at.isoformat()} "
            f"{record.error}"
        )


async def _replay(
    queue: DeadLetterQueue, max_attempts: int, batch_size: int, total: int
) -> ReplayResult:
    from mdp_core.store.database import Database
    from mdp_core.store.sinks import BarsSink, QuotesSink
    from mdp_core.store.write_path import WritePathPolicy

    async with Database.connect() as db:
        with click.progressbar(length=total, label="replaying", file=sys.stderr) as bar:
            return await queue.replay(
                # replayed records are often stored already: start idempotent
                [
                    QuotesSink(db, WritePathPolicy(start_idempotent=True)),
                    BarsSink(db, WritePathPolicy(start_idempotent=True)),
                ],
                max_attempts=max_attempts,
                batch_size=batch_size,
                progress=bar.update,
            )


@dlq.command()
@_dir_option
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="replays a record may fail for a data error before it is quarantined",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
def replay(directory: Path | None, max_attempts: int, batch_size: int) -> None:
    """Write the spooled records to the database again (MDP_PG_DSN, else the embedded one).

    What commits leaves the spool; the rest stays (attempts + 1); records that keep failing
    for a data error move to the quarantine."""
    from mdp_core.store.database import DatabaseError

    queue = _queue(directory)
    total = queue.count()
    if total == 0:
        click.echo(f"nothing to replay in {queue.directory}")
        return
    try:
        result = asyncio.run(_replay(queue, max_attempts, batch_size, total))
    except (DatabaseError, ReplayBusyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"replayed {result.replayed} ({result.new_rows} new rows), "
        f"still failing {result.still_failing}, quarantined {result.quarantined}"
    )
    for error, n in sorted(result.errors.items()):
        click.echo(f"  {n} still failing with {error}")


@dlq.command()
@_dir_option
@click.option("--quarantined-only", is_flag=True, help="only the quarantined records")
@click.option(
    "--older-than",
    callback=_age_option,
    help="only records whose last failure is older than this (e.g. 7d, 12h)",
)
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
def purge(
    directory: Path | None, quarantined_only: bool, older_than: timedelta | None, yes: bool
) -> None:
    """Delete dead-lettered records for good."""
    queue = _queue(directory)
    scope = "quarantined records" if quarantined_only else "records (spool and quarantine)"
    if older_than is not None:
        scope += f" older than {older_than}"
    if not yes:
        click.confirm(f"Delete {scope} in {queue.directory}?", abort=True)
    try:
        deleted = queue.purge(quarantined_only=quarantined_only, older_than=older_than)
    except ReplayBusyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"deleted {deleted} records")
