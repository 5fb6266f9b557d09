"""read_bars / read_quotes (and the async twins) on the real PostgreSQL: what the sinks wrote
comes back equal, in order, with fixed columns and types; bad input is refused clearly."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from mdp_core import aread_bars, aread_quotes, read_bars, read_quotes
from mdp_core.models import RESOLUTIONS, Bar, Quote
from mdp_core.store.database import Database, DatabaseError
from mdp_core.store.embedded import EmbeddedServer
from mdp_core.store.read import BAR_COLUMNS, QUOTE_COLUMNS, schema_of
from mdp_core.store.sinks import BarsSink, QuotesSink
from tests.security.test_sql_injection import NASTY, STORED

MIDNIGHT = datetime(2024, 1, 3, tzinfo=UTC)  # ranges around it span two daily partitions
SYMBOLS = ("AAPL", "MSFT", "SPY")


def bars_at(resolution: str, n: int = 8, symbols: tuple[str, ...] = SYMBOLS) -> list[Bar]:
    """``n`` bars per symbol around MIDNIGHT (from 3 windows before it), one in three without
    vwap and trade_count, in a shuffled order."""
    step = timedelta(seconds=RESOLUTIONS[resolution])
    first = MIDNIGHT - 3 * step
    out = []
    for k, symbol in enumerate(symbols):
        for i in range(n):
            o = 100.0 + k + i * 0.25
            out.append(
                Bar(
                    symbol,
                    first + i * step,
                    o,
                    o + 1.5,
                    o - 0.75,
                    o + 0.5,
                    1000.0 * i,
                    resolution,
                    vwap=None if i % 3 == 0 else o + 0.1,
                    trade_count=None if i % 3 == 0 else 10 * i,
                    source="test",
                )
            )
    random.Random(resolution).shuffle(out)
    return out


def quotes_with_nulls(n: int = 12) -> list[Quote]:
    """Quotes of two symbols around MIDNIGHT with every optional field NULL somewhere."""
    out = []
    for i in range(n):
        for symbol in ("MSFT", "AAPL"):
            bid = 50.0 + i
            out.append(
                Quote(
                    symbol,
                    MIDNIGHT + timedelta(milliseconds=1500 * (i - n // 2)),
                    bid=None if i % 4 == 1 else bid,
                    ask=None if i % 4 == 2 else bid + 0.01,
                    bid_size=None if i % 3 == 0 else 100.0,
                    ask_size=None if i % 3 == 1 else 200.0,
                    last=None if i % 2 == 0 else bid + 0.005,
                    last_size=None if i % 2 == 0 else 5.0,
                    source="" if i % 5 == 0 else "test",
                )
            )
    return out


def _clean(value: Any) -> Any:
    """A frame cell as the model holds it: NaN / pd.NA -> None, numpy scalars -> Python."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value.item() if hasattr(value, "item") else value


def frame_bars(frame: pd.DataFrame) -> list[Bar]:
    return [Bar(**{k: _clean(v) for k, v in row.items()}) for row in frame.to_dict("records")]


def frame_quotes(frame: pd.DataFrame) -> list[Quote]:
    return [Quote(**{k: _clean(v) for k, v in row.items()}) for row in frame.to_dict("records")]


def ordered(records: list[Any]) -> list[Any]:
    return sorted(records, key=lambda r: (r.symbol, r.ts))


async def write(dsn: str, bars: list[Bar] = (), quotes: list[Quote] = ()) -> None:  # type: ignore[assignment]
    async with Database.connect(dsn, max_size=2) as db:
        await BarsSink(db).write(list(bars))
        await QuotesSink(db).write(list(quotes))


# -- round trips ----------------------------------------------------------------------------


async def test_bars_of_every_resolution_come_back_equal(fresh_dsn: str) -> None:
    written = {res: bars_at(res) for res in RESOLUTIONS}
    await write(fresh_dsn, [b for bars in written.values() for b in bars])
    for res, bars in written.items():
        step = timedelta(seconds=RESOLUTIONS[res])
        start, end = MIDNIGHT - 3 * step, MIDNIGHT + 5 * step
        async with asyncio.timeout(30):
            frame = await aread_bars(None, start, end, res, dsn=fresh_dsn)
        assert list(frame.columns) == list(BAR_COLUMNS)
        assert frame_bars(frame) == ordered(bars), res  # every field, sorted by symbol, ts
        table = await aread_bars(list(SYMBOLS), start, end, res, dsn=fresh_dsn, as_="arrow")
        assert table.schema == schema_of("bars")
        assert table.to_pylist() == frame.astype(object).where(frame.notna(), None).to_dict(
            "records"
        )


def test_quotes_with_null_fields_come_back_equal(fresh_dsn: str) -> None:
    quotes = quotes_with_nulls()
    asyncio.run(write(fresh_dsn, quotes=quotes))
    frame = read_quotes(
        None, MIDNIGHT - timedelta(hours=1), MIDNIGHT + timedelta(hours=1), dsn=fresh_dsn
    )
    assert list(frame.columns) == list(QUOTE_COLUMNS)
    assert frame_quotes(frame) == ordered(quotes)
    assert frame["bid"].isna().sum() == sum(q.bid is None for q in quotes) > 0
    table = read_quotes(
        ["AAPL"],
        MIDNIGHT - timedelta(hours=1),
        MIDNIGHT + timedelta(hours=1),
        dsn=fresh_dsn,
        as_="arrow",
    )
    assert table.schema == schema_of("quotes")
    assert table.column("last").null_count == sum(
        q.last is None for q in quotes if q.symbol == "AAPL"
    )


def test_types_are_fixed_and_ts_is_utc(fresh_dsn: str) -> None:
    asyncio.run(write(fresh_dsn, bars_at("1m")))
    start, end = MIDNIGHT - timedelta(hours=1), MIDNIGHT + timedelta(hours=1)
    full = read_bars("AAPL", start, end, dsn=fresh_dsn)
    empty = read_bars("NO_SUCH_SYMBOL", start, end, dsn=fresh_dsn)
    assert len(full) == 8 and len(empty) == 0
    assert list(empty.columns) == list(full.columns) == list(BAR_COLUMNS)
    assert empty.dtypes.to_dict() == full.dtypes.to_dict()
    assert str(full["ts"].dtype) == "datetime64[us, UTC]"
    assert full["trade_count"].dtype == pd.Int64Dtype()  # nullable: NULLs do not make floats
    assert full["open"].dtype == "float64"
    quotes = read_quotes("NO_SUCH_SYMBOL", start, end, dsn=fresh_dsn)
    assert list(quotes.columns) == list(QUOTE_COLUMNS)
    assert str(quotes["ts"].dtype) == "datetime64[us, UTC]"


def test_selection_range_order_and_limit(fresh_dsn: str) -> None:
    bars = bars_at("5m", n=10, symbols=("SPY", "AAPL", "MSFT"))
    asyncio.run(write(fresh_dsn, bars))
    step = timedelta(minutes=5)
    start = MIDNIGHT - 3 * step
    # [start, end): the bar at start is in, the one at end is out
    frame = read_bars(["spy", " msft "], start + step, start + 4 * step, "5 min", dsn=fresh_dsn)
    assert list(zip(frame["symbol"], frame["ts"], strict=True)) == [
        (s, pd.Timestamp(start + i * step)) for s in ("MSFT", "SPY") for i in (1, 2, 3)
    ]
    everything = read_bars(None, start, start + 10 * step, "5m", dsn=fresh_dsn)
    assert frame_bars(everything) == ordered(bars)
    first = read_bars(None, start, start + 10 * step, "5m", dsn=fresh_dsn, limit=4)
    assert first.equals(everything.head(4))
    # ISO strings with an offset, and datetimes in another zone, mean the same instants
    east = timezone(timedelta(hours=5))
    same = read_bars(
        None,
        (start + step).astimezone(east).isoformat(),
        (start + 4 * step).isoformat().replace("+00:00", "Z"),
        "5m",
        dsn=fresh_dsn,
    )
    assert len(same) == 9
    assert read_bars([], start, start + step, dsn=fresh_dsn).empty


def test_symbols_that_look_like_sql_come_back_byte_for_byte(fresh_dsn: str) -> None:
    bars = [
        Bar(s, MIDNIGHT + timedelta(minutes=i), 10.0, 11.0, 9.0, 10.5, 5.0, "1m")
        for s in NASTY
        for i in range(2)
    ]
    asyncio.run(write(fresh_dsn, bars))
    end = MIDNIGHT + timedelta(minutes=2)
    frame = read_bars(NASTY, MIDNIGHT, end, dsn=fresh_dsn)
    assert sorted(frame["symbol"]) == sorted(STORED * 2)
    for raw, stored in zip(NASTY, STORED, strict=True):
        one = read_bars(raw, MIDNIGHT, end, dsn=fresh_dsn)
        assert one["symbol"].tolist() == [stored, stored]
    assert read_bars(None, MIDNIGHT, end, dsn=fresh_dsn)["symbol"].nunique() == len(NASTY)


# -- where the database is --------------------------------------------------------------------


def test_dsn_none_means_mdp_pg_dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(write(fresh_dsn, bars_at("1h")))
    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    frame = read_bars("MSFT", MIDNIGHT - timedelta(days=1), MIDNIGHT + timedelta(days=1), "1h")
    assert len(frame) == 8


def test_dsn_none_starts_and_restarts_the_embedded_server(outside_home: Path) -> None:
    server = EmbeddedServer(outside_home / "pg")
    try:
        assert not server.status().running
        empty = read_quotes(None, MIDNIGHT, MIDNIGHT + timedelta(hours=1))  # a fresh database
        assert server.status().running and empty.empty
        asyncio.run(write(server.dsn(database="mdp"), quotes=quotes_with_nulls()))
        server.stop()  # the next read finds its remembered server gone and starts it again
        again = read_quotes("AAPL", MIDNIGHT - timedelta(hours=1), MIDNIGHT + timedelta(hours=1))
        assert server.status().running and len(again) == 12
    finally:
        server.destroy()


async def test_sync_read_works_inside_a_running_event_loop(fresh_dsn: str) -> None:
    """A notebook cell runs inside an event loop: the sync call must still work there."""
    async with asyncio.timeout(30):
        await write(fresh_dsn, bars_at("1d"))
    frame = read_bars(
        None, MIDNIGHT - timedelta(days=3), MIDNIGHT + timedelta(days=5), "1d", dsn=fresh_dsn
    )
    assert len(frame) == 24
    async with asyncio.timeout(30):
        quotes = await aread_quotes("AAPL", MIDNIGHT, MIDNIGHT + timedelta(days=1), dsn=fresh_dsn)
    assert quotes.empty


def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    dsn = "postgresql://reader:pa55word@127.0.0.1:1/mdp"
    with pytest.raises(DatabaseError) as caught:
        read_bars("AAPL", MIDNIGHT, MIDNIGHT + timedelta(hours=1), dsn=dsn)
    assert "pa55word" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


# -- bad input ----------------------------------------------------------------------------------

NOW = datetime(2024, 1, 3, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((NOW.replace(tzinfo=None), NOW + timedelta(hours=1)), {}, r"start .* is naive"),
        ((NOW, "2024-01-03T13:00:00"), {}, r"end '2024-01-03T13:00:00' is naive .* offset"),
        ((NOW, "yesterday"), {}, r"end 'yesterday' is not an ISO 8601 time"),
        ((NOW, NOW), {}, r"start .* is not before end .*: expected start < end"),
        ((NOW + timedelta(hours=1), NOW), {}, r"is not before end"),
        ((NOW, NOW + timedelta(hours=1)), {"as_": "polars"}, r"as_ 'polars' is invalid"),
        ((NOW, NOW + timedelta(hours=1)), {"limit": 0}, r"limit 0 is invalid"),
    ],
)
def test_bad_input_is_refused_with_the_value(
    fresh_dsn: str, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    for call in (read_bars, read_quotes):
        with pytest.raises(ValueError, match=message):
            call("AAPL", *args, dsn=fresh_dsn, **kwargs)


def test_bad_symbols_and_types_are_refused(fresh_dsn: str) -> None:
    end = NOW + timedelta(hours=1)
    with pytest.raises(ValueError, match=r"invalid symbol ' ': expected 1-64 printable"):
        read_bars(["AAPL", " "], NOW, end, dsn=fresh_dsn)
    with pytest.raises(TypeError, match=r"symbols 42 is a int"):
        read_bars(42, NOW, end, dsn=fresh_dsn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"start .* is a date"):
        read_quotes("AAPL", NOW.date(), end, dsn=fresh_dsn)  # type: ignore[arg-type]


def test_an_unknown_resolution_lists_the_allowed_and_the_stored_ones(fresh_dsn: str) -> None:
    asyncio.run(write(fresh_dsn, bars_at("5s") + bars_at("1h")))
    with pytest.raises(ValueError) as caught:
        read_bars("AAPL", NOW, NOW + timedelta(hours=1), "2m", dsn=fresh_dsn)
    text = str(caught.value)
    assert "unknown resolution '2m'" in text
    assert "expected one of 1s, 5s, 10s, 15s, 30s, 1m, 5m, 15m, 30m, 1h, 1d" in text
    assert "(stored in mdp.bars: 5s, 1h)" in text
    # a valid label with nothing stored reads as empty (and logs what is stored)
    assert read_bars("AAPL", NOW, NOW + timedelta(hours=1), "15m", dsn=fresh_dsn).empty


def test_hostile_resolution_is_refused_before_any_sql(fresh_dsn: str) -> None:
    with pytest.raises(ValueError, match=r"unknown resolution \"1m'; DROP TABLE mdp.bars; --\""):
        read_bars(
            None, NOW, NOW + timedelta(hours=1), "1m'; DROP TABLE mdp.bars; --", dsn=fresh_dsn
        )
    assert read_bars(None, NOW, NOW + timedelta(hours=1), dsn=fresh_dsn).empty  # table intact


def test_arrow_and_pandas_agree(fresh_dsn: str) -> None:
    asyncio.run(write(fresh_dsn, bars_at("30s")))
    start, end = MIDNIGHT - timedelta(minutes=2), MIDNIGHT + timedelta(minutes=3)
    table = read_bars(None, start, end, "30s", dsn=fresh_dsn, as_="arrow")
    frame = read_bars(None, start, end, "30s", dsn=fresh_dsn)
    assert isinstance(table, pa.Table) and table.num_rows == len(frame) == 24
    assert table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get).equals(frame)
