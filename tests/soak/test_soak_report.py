"""The soak report's accounting queries, on crafted rows (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from benchmarks.soak_report import poison_rows_in_table
from benchmarks.soak_streams import POISON_SOURCE
from mdp_core.models import Bar, Quote
from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink, QuotesSink

T0 = datetime(2000, 1, 3, tzinfo=UTC)


async def test_poison_rows_are_counted_per_stream(fresh_dsn: str) -> None:
    """Streams share the tables: each counts only the poison rows of its own symbols."""
    step = timedelta(seconds=5)
    bars = [Bar("AAA", T0 + i * step, 10, 12, 9, 11, 1, "5s", source=POISON_SOURCE)
            for i in range(2)]  # fmt: skip
    bars += [Bar("BBB", T0 + i * step, 10, 12, 9, 11, 1, "5s", source=POISON_SOURCE)
             for i in range(3)]  # fmt: skip
    bars.append(Bar("AAA", T0 + 9 * step, 10, 12, 9, 11, 1, "5s", source="ibkr"))
    quotes = [Quote("CCC", T0, bid=10.0, ask=10.1, source=POISON_SOURCE)]
    async with asyncio.timeout(60), Database.connect(fresh_dsn, max_size=2) as db:
        await BarsSink(db).write(bars)
        await QuotesSink(db).write(quotes)
        assert await poison_rows_in_table(db, "bars", ["AAA"]) == 2
        assert await poison_rows_in_table(db, "bars", ["BBB", "CCC"]) == 3
        assert await poison_rows_in_table(db, "quotes", ["AAA", "BBB"]) == 0
        assert await poison_rows_in_table(db, "quotes", ["CCC"]) == 1
