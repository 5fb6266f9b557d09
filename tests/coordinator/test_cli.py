"""`mdp dlq list|replay|purge` through click's CliRunner; replay against the real database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from mdp_core.cli import main
from mdp_core.cli.dlq import parse_age
from mdp_core.dlq import DeadLetterQueue
from tests.coordinator.helpers import bars, quotes


@pytest.fixture
def spool(tmp_path: Path) -> DeadLetterQueue:
    dlq = DeadLetterQueue()  # $MDP_HOME/dlq, what the CLI uses by default
    dlq.put(quotes(7), asyncpg.ConnectionDoesNotExistError("connection lost"), 5, stream="s1")
    bad = quotes(1, start=100)[0]
    object.__setattr__(bad, "bid", -3.0)
    dlq.put([bad], asyncpg.CheckViolationError('violates "quotes_bid_check"'), 1, stream="s1")
    dlq.put(bars(2), TimeoutError(), 5, stream="s2")
    return dlq


def test_list_summarises_by_kind_stream_and_error(spool: DeadLetterQueue) -> None:
    result = CliRunner().invoke(main, ["dlq", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("10 records in the spool at ")
    assert any("quote" in x and "s1" in x and "ConnectionDoesNotExistError [08003]" in x
               and x.endswith(" 7") for x in lines)  # fmt: skip
    assert any("CheckViolationError [23514]" in x and x.endswith(" 1") for x in lines)
    assert any("bar" in x and "s2" in x and "TimeoutError" in x and x.endswith(" 2") for x in lines)


def test_list_filters_and_shows_records(spool: DeadLetterQueue) -> None:
    result = CliRunner().invoke(main, ["dlq", "list", "--kind", "bar", "--records", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("2 records")
    assert result.output.count("MSFT") == 2 and "attempts=5" in result.output
    empty = CliRunner().invoke(main, ["dlq", "list", "--quarantined"])
    assert empty.exit_code == 0 and empty.output.startswith("0 records in the quarantine")


def test_replay_writes_to_the_database_and_reports(
    spool: DeadLetterQueue, fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    runner = CliRunner()
    result = runner.invoke(main, ["dlq", "replay", "--max-attempts", "1"])
    assert result.exit_code == 0, result.output
    assert "replayed 9 (9 new rows), still failing 0, quarantined 1" in result.output
    assert spool.count() == 0 and spool.count(quarantined=True) == 1

    async def counts() -> tuple[int, int]:
        conn = await asyncpg.connect(fresh_dsn)
        try:
            return (
                await conn.fetchval("SELECT count(*) FROM mdp.quotes"),
                await conn.fetchval("SELECT count(*) FROM mdp.bars"),
            )
        finally:
            await conn.close()

    assert asyncio.run(counts()) == (7, 2)
    again = runner.invoke(main, ["dlq", "replay"])
    assert again.exit_code == 0 and "nothing to replay" in again.output


def test_replay_reports_an_unreachable_database(
    spool: DeadLetterQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDP_PG_DSN", "postgresql://bob:s3cret@127.0.0.1:1/nowhere")
    result = CliRunner().invoke(main, ["dlq", "replay"])
    assert result.exit_code == 1
    assert "cannot connect" in result.output and "s3cret" not in result.output
    assert spool.count() == 10


def test_purge_asks_unless_yes(spool: DeadLetterQueue) -> None:
    runner = CliRunner()
    declined = runner.invoke(main, ["dlq", "purge"], input="n\n")
    assert declined.exit_code == 1 and spool.count() == 10
    confirmed = runner.invoke(main, ["dlq", "purge", "--older-than", "1h"], input="y\n")
    assert confirmed.exit_code == 0 and "deleted 0 records" in confirmed.output
    done = runner.invoke(main, ["dlq", "purge", "--yes"])
    assert done.exit_code == 0 and "deleted 10 records" in done.output
    assert spool.count() == 0


def test_purge_rejects_a_bad_age(spool: DeadLetterQueue) -> None:
    result = CliRunner().invoke(main, ["dlq", "purge", "--older-than", "7 weeks", "--yes"])
    assert result.exit_code == 2 and "expected a number and s/m/h/d" in result.output
    assert spool.count() == 10


def test_parse_age() -> None:
    assert parse_age("90s").total_seconds() == 90
    assert parse_age("1.5h").total_seconds() == 5400
    assert parse_age("7D").days == 7
    with pytest.raises(ValueError, match="'x'"):
        parse_age("x")
