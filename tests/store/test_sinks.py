"""Sinks on the real PostgreSQL: idempotence, partitions on demand, all-or-nothing batches."""

from __future__ import annotations

import asyncio
import csv
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from asyncpg.exceptions._base import DataError as ClientDataError

from mdp_core.models import Bar, Quote
from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink, QuotesSink
from tests.store.helpers import T0, make_bars, make_quotes

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


async def _keys_are_unique(db: Database, table: str) -> None:
    key = {"quotes": "symbol, ts", "bars": "symbol, resolution, ts"}[table]
    total, distinct = await db.pool.fetchrow(
        f"SELECT count(*), count(DISTINCT ({key})) FROM mdp.{table}"
    )
    assert total == distinct


async def test_quotes_round_trip_exactly(db: Database) -> None:
    quotes = make_quotes(50)
    quotes.append(Quote("SPY", T0, bid=1.5))  # absent fields stay NULL
    async with QuotesSink(db) as sink:
        assert sink.kind == "quote"
        assert await sink.write(quotes) == 51
    rows = await db.pool.fetch(
        "SELECT symbol, ts, bid, ask, bid_size, ask_size, last, last_size, source "
        "FROM mdp.quotes ORDER BY ts, symbol"
    )
    stored = [Quote(**dict(r)) for r in rows]
    assert sorted(stored, key=lambda q: (q.ts, q.symbol)) == sorted(
        quotes, key=lambda q: (q.ts, q.symbol)
    )
    ingested = await db.pool.fetchval("SELECT min(ingested_at) FROM mdp.quotes")
    assert ingested is not None


async def test_bars_round_trip_exactly(db: Database) -> None:
    bars = make_bars(40, resolution="5s")
    async with BarsSink(db) as sink:
        assert sink.kind == "bar"
        assert await sink.write(bars) == 40
    rows = await db.pool.fetch(
        "SELECT symbol, ts, open, high, low, close, volume, resolution, vwap, trade_count, "
        "source FROM mdp.bars"
    )
    assert sorted((Bar(**dict(r)) for r in rows), key=lambda b: b.key) == sorted(
        bars, key=lambda b: b.key
    )


async def test_writing_the_same_batch_twice_adds_nothing(db: Database) -> None:
    quotes, bars = make_quotes(500), make_bars(500)
    async with QuotesSink(db) as qs, BarsSink(db) as bs:
        assert await qs.write(quotes) == 500
        assert await bs.write(bars) == 500
        assert await qs.write(quotes) == 0
        assert await bs.write(bars) == 0
        # an overlapping batch stores only its new half
        assert await qs.write(make_quotes(1000)) == 500
    assert await db.count("quotes") == 1000
    assert await db.count("bars") == 500
    await _keys_are_unique(db, "quotes")
    await _keys_are_unique(db, "bars")


async def test_in_batch_duplicates_commit_once(db: Database) -> None:
    quotes = make_quotes(10)
    batch = quotes + quotes[:5] + [quotes[0]]
    bars = make_bars(6)
    async with QuotesSink(db) as qs, BarsSink(db) as bs:
        assert await qs.write(batch) == 10
        assert await bs.write(bars + bars) == 6
    assert await db.count("quotes") == 10
    assert await db.count("bars") == 6


async def test_the_first_stored_version_of_a_key_wins(db: Database) -> None:
    first = Quote("AAPL", T0, bid=1.0, ask=1.1)
    revised = Quote("AAPL", T0, bid=2.0, ask=2.1)
    async with QuotesSink(db) as sink:
        assert await sink.write([first]) == 1
        assert await sink.write([revised]) == 0
    assert await db.pool.fetchval("SELECT bid FROM mdp.quotes") == 1.0


async def test_an_empty_batch_does_not_touch_the_database(fresh_dsn: str) -> None:
    db = await Database.connect(fresh_dsn)
    sink = QuotesSink(db)
    await db.close()  # any database access would now fail
    assert await sink.write([]) == 0
    assert await sink.write(()) == 0


async def test_partitions_are_created_on_demand_across_days(db: Database) -> None:
    assert await db.partitions("quotes") == []
    # 3 quotes per symbol, 20 hours apart: 2 Jan 14:30, 3 Jan 10:30, 4 Jan 06:30
    quotes = make_quotes(6, step=timedelta(hours=20))
    bars = make_bars(4, resolution="1d", start=datetime(2024, 2, 28, tzinfo=UTC))  # leap year
    async with QuotesSink(db) as qs, BarsSink(db) as bs:
        assert await qs.write(quotes) == 6
        assert await bs.write(bars) == 4
    # ... and one day ahead of the last
    assert await db.partitions("quotes") == [
        "quotes_p20240102",
        "quotes_p20240103",
        "quotes_p20240104",
        "quotes_p20240105",
    ]
    assert await db.partitions("bars") == ["bars_p20240228", "bars_p20240229", "bars_p20240301"]
    # each row sits in the partition of its UTC day
    rows = await db.pool.fetch(
        "SELECT tableoid::regclass::text AS part, ts FROM mdp.quotes ORDER BY ts"
    )
    for row in rows:
        assert row["part"] == f"mdp.quotes_p{row['ts'].astimezone(UTC):%Y%m%d}"


async def test_a_day_boundary_in_another_time_zone_still_uses_the_utc_day(db: Database) -> None:
    from zoneinfo import ZoneInfo

    late_in_new_york = datetime(2024, 1, 2, 23, 30, tzinfo=ZoneInfo("America/New_York"))
    async with QuotesSink(db) as sink:
        assert await sink.write([Quote("AAPL", late_in_new_york, bid=1.0)]) == 1
    assert await db.partitions("quotes") == ["quotes_p20240103", "quotes_p20240104"]


async def test_concurrent_writers_create_the_same_day_without_error(fresh_dsn: str) -> None:
    # three pools = three sessions with separate partition caches, like separate processes
    async with (
        Database.connect(fresh_dsn, max_size=3) as a,
        Database.connect(fresh_dsn, max_size=3) as b,
        Database.connect(fresh_dsn, max_size=3) as c,
    ):
        writes = []
        for i, db in enumerate((a, b, c, a, b, c)):
            # the same 5 new days in every batch, disjoint keys per batch
            batch = make_quotes(
                50,
                start=T0 + timedelta(milliseconds=i),
                step=timedelta(hours=12),
                symbols=(f"S{i}",),
            )
            writes.append(QuotesSink(db).write(batch))
        async with asyncio.timeout(60):
            results = await asyncio.gather(*writes)
        assert results == [50] * 6
        assert await a.count("quotes") == 300
        days = {(T0 + timedelta(hours=12 * k)).date() for k in range(50)}
        days.add(max(days) + timedelta(days=1))  # created ahead
        assert await a.partitions("quotes") == sorted(f"quotes_p{d:%Y%m%d}" for d in days)


async def test_a_partition_dropped_elsewhere_is_recreated(fresh_dsn: str) -> None:
    async with Database.connect(fresh_dsn) as writer, Database.connect(fresh_dsn) as janitor:
        sink = QuotesSink(writer)
        assert await sink.write(make_quotes(4)) == 4  # the writer now caches 2 Jan
        dropped = await janitor.drop_partitions_older_than(0, now=datetime(2024, 1, 4, tzinfo=UTC))
        assert dropped == ["quotes_p20240102", "quotes_p20240103"]
        assert await sink.write(make_quotes(6)) == 6  # recreated, not a CHECK error
    async with Database.connect(fresh_dsn) as check:
        assert await check.partitions("quotes") == ["quotes_p20240102", "quotes_p20240103"]
        assert await check.count("quotes") == 6


async def test_a_new_partition_waits_only_briefly_behind_a_long_reader(db: Database) -> None:
    async with QuotesSink(db) as sink:
        assert await sink.write(make_quotes(4)) == 4  # 2 and 3 Jan exist now
        async with db.pool.acquire() as reader, reader.transaction():
            await reader.fetchval("SELECT count(*) FROM mdp.quotes")  # holds a lock until commit
            later = make_quotes(4, start=T0 + timedelta(days=10))  # needs a new partition
            async with asyncio.timeout(30):
                with pytest.raises(asyncpg.LockNotAvailableError) as info:
                    await sink.write(later)
            assert info.value.sqlstate == "55P03"  # transient: the coordinator retries
            assert await sink.write(make_quotes(6)) == 2  # days that exist still take writes
        assert await sink.write(later) == 4  # the reader is gone: the retry succeeds


# -- all or nothing: a poison row fails its whole batch ---------------------------------------


def _poison_quote(field: str, value: object) -> Quote:
    """A quote that slipped past validation, as a buggy provider could produce."""
    quote = Quote("AAPL", T0 + timedelta(days=3), bid=1.0, ask=1.1)
    object.__setattr__(quote, field, value)
    return quote


def _poison_bar(**fields: object) -> Bar:
    bar = make_bars(1, start=T0 + timedelta(days=3))[0]
    for name, value in fields.items():
        object.__setattr__(bar, name, value)
    return bar


@pytest.mark.parametrize(
    ("field", "value", "constraint"),
    [
        ("bid", -1.0, "quotes_bid_check"),
        ("ask", 0.0, "quotes_ask_check"),
        ("bid", float("nan"), "quotes_bid_check"),
        ("last", float("inf"), "quotes_last_check"),
        ("bid_size", -5.0, "quotes_bid_size_check"),
        ("symbol", "", "quotes_symbol_check"),
        ("symbol", "BAD\x07SYMBOL", "quotes_symbol_check"),
        ("symbol", "X" * 65, "quotes_symbol_check"),
    ],
)
async def test_a_quote_breaking_a_check_fails_the_whole_batch(
    db: Database, field: str, value: object, constraint: str
) -> None:
    good = make_quotes(999)
    batch = [*good[:500], _poison_quote(field, value), *good[500:]]
    async with QuotesSink(db) as sink:
        with pytest.raises(asyncpg.CheckViolationError) as info:
            await sink.write(batch)
        assert info.value.sqlstate == "23514"
        assert info.value.constraint_name == constraint
        assert await db.count("quotes") == 0  # nothing of the batch was committed
        assert await sink.write(good) == 999  # the connection and sink still work


@pytest.mark.parametrize(
    ("fields", "constraint"),
    [
        ({"high": 50.0}, "bars_prices_check"),  # high below open and close
        ({"low": 1000.0}, "bars_prices_check"),
        ({"open": float("nan")}, "bars_prices_check"),
        ({"resolution": "7s"}, "bars_resolution_check"),
        ({"volume": -1.0}, "bars_volume_check"),
        ({"vwap": 0.0}, "bars_vwap_check"),
        ({"trade_count": -3}, "bars_trade_count_check"),
    ],
)
async def test_a_bar_breaking_a_check_fails_the_whole_batch(
    db: Database, fields: dict[str, object], constraint: str
) -> None:
    good = make_bars(999)
    async with BarsSink(db) as sink:
        with pytest.raises(asyncpg.CheckViolationError) as info:
            await sink.write([*good, _poison_bar(**fields)])
        assert info.value.sqlstate == "23514"
        assert info.value.constraint_name == constraint
        assert await db.count("bars") == 0


async def test_values_postgres_cannot_store_fail_the_whole_batch(db: Database) -> None:
    good = make_quotes(100)
    async with QuotesSink(db) as sink:
        with pytest.raises(asyncpg.CharacterNotInRepertoireError) as info:  # NUL in text
            await sink.write([*good, _poison_quote("symbol", "NUL\x00")])
        assert info.value.sqlstate == "22021"
        with pytest.raises(ClientDataError, match=r"cannot be stored in mdp\.quotes"):
            await sink.write([*good, _poison_quote("bid", "1.0")])  # a str where a float goes
        with pytest.raises(ClientDataError):
            await sink.write([*good, _poison_quote("ts", "2024-01-05")])
    assert await db.count("quotes") == 0


async def test_a_record_of_the_wrong_kind_is_a_clear_type_error(db: Database) -> None:
    async with QuotesSink(db) as sink:
        with pytest.raises(TypeError, match=r"QuotesSink\.write expects Quote records, got Bar"):
            await sink.write([*make_quotes(2), *make_bars(1)])  # type: ignore[list-item]


# -- real data ------------------------------------------------------------------------------


def _spy_bars() -> list[Bar]:
    """SPY 1-minute bars, January 2011 (end-stamped upstream: shift to the window start)."""
    bars = []
    with (DATA_DIR / "SPY_1min_2011-01.csv").open() as f:
        for stamp, o, h, lo, c, v in csv.reader(f, delimiter=";"):
            end = datetime.strptime(stamp, "%Y%m%d %H%M%S").replace(tzinfo=UTC)
            bars.append(
                Bar(
                    "SPY",
                    end - timedelta(minutes=1),
                    float(o),
                    float(h),
                    float(lo),
                    float(c),
                    float(v),
                    "1m",
                    source="pyalgotrade",
                )
            )
    return bars


async def test_a_month_of_real_spy_bars(db: Database) -> None:
    bars = _spy_bars()
    async with BarsSink(db) as sink:
        written = 0
        for i in range(0, len(bars), 5000):
            written += await sink.write(bars[i : i + 5000])
        assert written == len(bars) == 14_180
        assert await sink.write(bars[:5000]) == 0
    days = {b.ts.date() for b in bars}
    days |= {d + timedelta(days=1) for d in days}  # each with the next day, created ahead
    assert await db.partitions("bars") == [f"bars_p{d:%Y%m%d}" for d in sorted(days)]
    row = await db.pool.fetchrow(
        "SELECT count(*) AS n, sum(volume) AS v FROM mdp.bars WHERE ts >= $1 AND ts < $2",
        datetime(2011, 1, 3, tzinfo=UTC),
        datetime(2011, 1, 4, tzinfo=UTC),
    )
    on_jan_3 = [b for b in bars if b.ts.date() == date(2011, 1, 3)]
    assert row["n"] == len(on_jan_3)
    assert row["v"] == pytest.approx(sum(b.volume for b in on_jan_3))
