"""The bulk writer (``mdp import``) on the two write paths, against the real PostgreSQL.

A table of new rows goes straight into ``mdp.bars`` (fast); a table with a key stored
already, or one key twice, is refused whole there and written the idempotent way (fallback),
storing only what is missing; after that the writer holds the idempotent path. The rows
stored are compared with the rows written (ground truth), and ``new`` with what really went
in.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mdp_core.columns import records_table
from mdp_core.dlq import DeadLetterQueue
from mdp_core.importing import Importer
from mdp_core.models import Bar
from mdp_core.providers.replay import ReplaySource
from mdp_core.store.bulk import BulkResult, BulkWriter
from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink

DATA = Path(__file__).resolve().parents[2] / "data"
AAPL = DATA / "AAPL_1min_2023-05.csv"

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
STORED = "SELECT symbol, ts, open, close FROM mdp.bars ORDER BY symbol, ts"


def bars(start: int, stop: int, close: float = 10.5) -> list[tuple[Any, ...]]:
    """Stage rows of 1-minute bars ``start`` .. ``stop - 1`` minutes after T0."""
    return BarsSink.rows(
        [
            Bar("BLK", T0 + timedelta(minutes=m), 10.0, 11.0, 9.0, close, 100.0, resolution="1m")
            for m in range(start, stop)
        ]
    )


async def stored(db: Database) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await db.pool.fetch(STORED)]


def expected(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What the table should hold of stage rows: (symbol, ts, open, close), first per key."""
    first: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for r in rows:
        first.setdefault((r[0], r[2]), (r[0], r[2], r[3], r[6]))
    return sorted(first.values())


async def test_new_tables_go_straight_in_and_an_overlap_falls_back_then_holds(
    fresh_dsn: str, tmp_path: Path
) -> None:
    async with asyncio.timeout(60), Database.connect(fresh_dsn, max_size=2) as db:
        writer = BulkWriter(db, "bars", dlq=DeadLetterQueue(tmp_path / "dlq"))
        first = await writer.write(records_table("bars", bars(0, 100)))
        assert first == BulkResult(stored=100, new=100)
        assert (writer.paths.fast_batches, writer.paths.fast_rows) == (1, 100)

        # half of it stored already: refused whole on the fast path, only the rest goes in
        second = await writer.write(records_table("bars", bars(50, 150, close=10.75)))
        assert second == BulkResult(stored=100, new=50)
        assert (writer.paths.fallback_batches, writer.paths.fallback_rows) == (1, 100)

        # the writer now holds the idempotent path: no fast attempt for the next table
        third = await writer.write(records_table("bars", bars(150, 200)))
        assert third == BulkResult(stored=50, new=50)
        assert (writer.paths.idempotent_batches, writer.paths.fast_batches) == (1, 1)

        # the first stored row of a key wins (the overlap's close 10.75 did not replace it)
        assert await stored(db) == expected(bars(0, 100) + bars(50, 150, 10.75) + bars(150, 200))


async def test_a_table_holding_a_key_twice_stores_it_once(fresh_dsn: str, tmp_path: Path) -> None:
    rows = bars(0, 30) + bars(10, 11, close=9.5)  # minute 10 twice, the first one wins
    async with asyncio.timeout(60), Database.connect(fresh_dsn, max_size=2) as db:
        writer = BulkWriter(db, "bars", dlq=DeadLetterQueue(tmp_path / "dlq"))
        result = await writer.write(records_table("bars", rows))
        assert result == BulkResult(stored=31, new=30)
        assert writer.paths.fallback_batches == 1 and writer.paths.fast_batches == 0
        assert await stored(db) == expected(rows)


async def test_an_import_reports_its_write_paths_and_a_reimport_adds_nothing(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """Through the Importer (what ``mdp import`` runs): a first import of a file goes the
    fast way, table by table; importing it again falls back once, then holds."""
    source = ReplaySource(path=AAPL, symbol="AAPL", source="import")
    async with asyncio.timeout(60), Database.connect(fresh_dsn, max_size=3) as db:
        dlq = DeadLetterQueue(tmp_path / "dlq")
        first = await Importer(db, rejects=tmp_path / "r1", dlq=dlq).run([source])
        source = ReplaySource(path=AAPL, symbol="AAPL", source="import")
        again = await Importer(db, rejects=tmp_path / "r2", dlq=dlq).run([source])
        count = await db.pool.fetchval("SELECT count(*) FROM mdp.bars")

    assert first.rows == first.imported == first.new == count == 2_083  # the file's bars
    assert first.write_paths["fast_rows"] == 2_083 and first.write_paths["fallback_rows"] == 0
    assert again.imported == 2_083 and again.new == 0
    assert again.write_paths["fast_rows"] == 0
    assert again.write_paths["fallback_batches"] >= 1  # the first table met the stored rows
    written = sum(again.write_paths[f"{p}_rows"] for p in ("fast", "fallback", "idempotent"))
    assert written == 2_083
