"""``Backfill`` against the simulated gateway (real ib_async over TCP) into a real PostgreSQL:
trading minutes per the exchange calendar, nothing asked twice, IB's pacing kept, empty
ranges recorded, FX and futures, every bar size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mdp_core.backfill import Backfill, BackfillResult, subtract_spans
from mdp_core.calendars import open_intervals
from mdp_core.gateway import SimulatedGateway
from mdp_core.providers.ibkr.compat import load_ib_library
from mdp_core.providers.ibkr.pacing import PacingRules
from mdp_core.store.database import Database
from tests.ibkr.helpers import settings_for

TIMEOUT = 60
START = datetime(2024, 2, 1, tzinfo=UTC)  # the simulated gateway's "now"
JAN2, JAN9 = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 9, tzinfo=UTC)
FX, ES = "EUR:CASH:IDEALPRO:USD", "ES:FUT:CME:USD:202503"


@pytest.fixture
async def hgw() -> AsyncIterator[SimulatedGateway]:
    async with SimulatedGateway(
        symbols=["AAPL", "MSFT", "SPY", "QQQ", "NVDA", FX, ES], port=0, seed=9, start=START
    ) as gateway:
        yield gateway


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[Database]:
    async with Database.connect(fresh_dsn) as database:
        yield database


async def _rows(db: Database, symbol: str, resolution: str = "1m") -> list[Any]:
    return await db.pool.fetch(
        "SELECT ts, open, high, low, close, volume, vwap, trade_count FROM mdp.bars "
        "WHERE symbol = $1 AND resolution = $2 ORDER BY ts",
        symbol,
        resolution,
    )


def _history_requests(gw: SimulatedGateway) -> int:
    return len(gw.requests_for(20))


async def _backfill(
    gw: SimulatedGateway, db: Database, symbols: list[str], start: datetime, end: datetime,
    resolution: str = "1m", **kw: Any,
) -> BackfillResult:  # fmt: skip
    kw.setdefault("ibkr_settings", settings_for(gw))
    async with asyncio.timeout(TIMEOUT):
        return await Backfill(db, symbols, start, end, resolution, **kw).run()


def _trading_minutes(start: datetime, end: datetime) -> list[datetime]:
    out = []
    for lo, hi in open_intervals("XNYS", start, end):
        t = lo
        while t < hi:
            out.append(t)
            t += timedelta(minutes=1)
    return out


async def test_rows_are_the_trading_minutes_and_a_second_run_adds_nothing(
    hgw: SimulatedGateway, db: Database
) -> None:
    result = await _backfill(hgw, db, ["AAPL", "MSFT"], JAN2, JAN9)
    minutes = _trading_minutes(JAN2, JAN9)
    assert len(minutes) == 5 * 390  # Jan 2-5 and 8, 2024: five regular sessions
    for symbol in ("AAPL", "MSFT"):
        rows = await _rows(db, symbol)
        assert [r["ts"] for r in rows] == minutes
        model = hgw.model(symbol).window_bars(
            int(JAN2.timestamp()), int(JAN9.timestamp()), 60, "TRADES",
            [(lo.timestamp(), hi.timestamp()) for lo, hi in open_intervals("XNYS", JAN2, JAN9)],
        )  # fmt: skip
        assert [
            (r["open"], r["high"], r["low"], r["close"], r["volume"], r["trade_count"])
            for r in rows
        ] == [(b.open, b.high, b.low, b.close, b.volume, b.count) for b in model]
        report = result.symbols[symbol]
        assert (report.planned, report.requested, report.empty, report.failed) == (5, 5, 0, 0)
        assert report.received == report.committed == 5 * 390
    assert result.balanced and result.pacing_violations == 0
    asked = _history_requests(hgw)

    again = await _backfill(hgw, db, ["AAPL", "MSFT"], JAN2, JAN9)
    assert again.planned == 0 and again.received == 0
    assert _history_requests(hgw) == asked  # not a single request
    assert len(await _rows(db, "AAPL")) == 5 * 390
    assert "history_pacing_violations" not in hgw.stats()["events"]


async def test_only_the_missing_part_is_asked_for(hgw: SimulatedGateway, db: Database) -> None:
    await _backfill(
        hgw, db, ["AAPL"], datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC)
    )
    before = list(hgw.requests_for(20))
    result = await _backfill(hgw, db, ["AAPL"], JAN2, JAN9)
    # Jan 3 and 4 are stored: only Jan 2, 5 and 8 are asked for
    assert result.symbols["AAPL"].planned == 3
    assert len(hgw.requests_for(20)) == len(before) + 3
    assert [r["ts"] for r in await _rows(db, "AAPL")] == _trading_minutes(JAN2, JAN9)


async def test_no_data_is_recorded_and_not_asked_again(hgw: SimulatedGateway, db: Database) -> None:
    # planned around the clock (calendar 24/7) but fetched with IB's regular hours: the
    # weekend has no data
    saturday, monday = datetime(2024, 1, 6, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC)
    result = await _backfill(hgw, db, ["AAPL"], saturday, monday, calendar="24/7")
    report = result.symbols["AAPL"]
    assert (report.requested, report.empty, report.received, report.failed) == (2, 2, 0, 0)
    ranges = await db.pool.fetch(
        "SELECT start_ts, end_ts, bars FROM mdp.backfill_ranges ORDER BY 1"
    )
    assert [(r["start_ts"], r["end_ts"], r["bars"]) for r in ranges] == [
        (saturday, saturday + timedelta(days=1), 0), (saturday + timedelta(days=1), monday, 0),
    ]  # fmt: skip
    asked = _history_requests(hgw)
    again = await _backfill(hgw, db, ["AAPL"], saturday, monday, calendar="24/7")
    assert again.planned == 0 and _history_requests(hgw) == asked


async def test_fx_and_futures_all_hours(hgw: SimulatedGateway, db: Database) -> None:
    day = datetime(2024, 1, 10, tzinfo=UTC)
    result = await _backfill(
        hgw, db, ["eur:cash", ES], day, day + timedelta(days=1), "5m", rth=False
    )
    assert result.balanced and result.failed == 0
    fx, es = await _rows(db, FX, "5m"), await _rows(db, ES, "5m")
    assert len(fx) == len(es) == 288
    assert all(r["volume"] == 0 and r["vwap"] is None for r in fx)  # MIDPOINT: no volume
    assert all(r["volume"] > 0 and (r["close"] * 4).is_integer() for r in es)
    asked = [r for r in hgw.requests_for(20)]
    assert {r.fields[19] for r in asked} == {"MIDPOINT", "TRADES"}  # whatToShow per instrument


@pytest.mark.parametrize(("resolution", "per_day"), [("5s", 4680), ("1h", 7), ("1d", 1)])
async def test_other_bar_sizes(
    hgw: SimulatedGateway, db: Database, resolution: str, per_day: int
) -> None:
    result = await _backfill(hgw, db, ["SPY"], JAN2, datetime(2024, 1, 4, tzinfo=UTC), resolution)
    rows = await _rows(db, "SPY", resolution)
    assert len(rows) == 2 * per_day and result.balanced
    expected_requests = {"5s": 14, "1h": 1, "1d": 1}[resolution]  # 3600 S, 30 D, 365 D at most
    assert result.symbols["SPY"].requested == expected_requests


async def test_more_requests_than_the_window_allows_wait_and_are_never_refused(
    db: Database,
) -> None:
    scale = 0.01  # IB's rules with 10 minutes as 6 s (both sides)
    async with SimulatedGateway(
        symbols=["AAPL", "MSFT", "SPY", "QQQ", "NVDA"], port=0, seed=9, start=START,
        history_pacing_scale=scale,
    ) as gw:  # fmt: skip
        result = await _backfill(
            gw, db, ["AAPL", "MSFT", "SPY", "QQQ", "NVDA"], JAN2, datetime(2024, 1, 4, tzinfo=UTC),
            "5s", pacing=PacingRules().scaled(scale),
        )  # fmt: skip
        assert result.planned == 70 > 60  # 5 symbols x 2 sessions x 7 hours
        assert result.pacing_violations == 0 and result.waited > 0
        assert "history_pacing_violations" not in gw.stats()["events"]
        assert result.received == 5 * 2 * 4680 and result.balanced


class ManualClock:
    """The gateway's pacing clock and the backfill's, one clock moved only by the backfill's
    waits: IB's real windows, deterministic and instant."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.0)
        await asyncio.sleep(0)


async def test_a_pacing_violation_from_elsewhere_backs_off_and_retries(db: Database) -> None:
    lib = load_ib_library()  # ib_async, else ib_insync
    clock = ManualClock()
    async with SimulatedGateway(symbols=["AAPL"], port=0, seed=9, start=START, clock=clock) as gw:
        # another client just made the very request the backfill will make
        ib = lib.IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=99)
        (aapl,) = await ib.qualifyContractsAsync(lib.Stock("AAPL", "SMART", "USD"))
        close = datetime(2024, 1, 2, 21, tzinfo=UTC)  # the session's end: what the backfill asks
        await ib.reqHistoricalDataAsync(
            aapl, close, "23400 S", "1 min", "TRADES", True, formatDate=2
        )
        result = await _backfill(
            gw, db, ["AAPL"], datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC),
            clock=clock, sleep=clock.sleep,
        )  # fmt: skip
        ib.disconnect()
    assert result.pacing_violations == 1 and result.symbols["AAPL"].requested == 2
    assert result.waited >= 15.0  # IB's identical-request window, on the shared clock
    assert gw.stats()["events"]["history_pacing_violations"] == 1
    assert len(await _rows(db, "AAPL")) == 390 and result.failed == 0


async def test_unknown_symbols_are_reported_and_the_rest_is_fetched(
    hgw: SimulatedGateway, db: Database
) -> None:
    result = await _backfill(
        hgw, db, ["AAPL", "NOPE", "ES:FUT:CME:USD:209912"], JAN2, JAN2 + timedelta(days=1)
    )
    assert result.symbols["NOPE"].unknown and result.symbols["ES:FUT:CME:USD:209912"].unknown
    assert result.failed == 2 and len(await _rows(db, "AAPL")) == 390


def test_subtract_spans() -> None:
    d = [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(10)]
    assert subtract_spans([(d[0], d[9])], [(d[1], d[2]), (d[4], d[6]), (d[8], d[9])]) == [
        (d[0], d[1]), (d[2], d[4]), (d[6], d[8]),
    ]  # fmt: skip
    assert subtract_spans([(d[1], d[3])], [(d[0], d[5])]) == []
    assert subtract_spans([(d[1], d[3]), (d[5], d[7])], []) == [(d[1], d[3]), (d[5], d[7])]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="expected end > start"):
        Backfill(None, ["AAPL"], JAN9, JAN2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resolution '1s' cannot be fetched"):
        Backfill(None, ["AAPL"], JAN2, JAN9, "1s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid instrument id 'ES:FUT'"):
        Backfill(None, ["ES:FUT"], JAN2, JAN9)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a timezone-aware datetime"):
        Backfill(None, ["AAPL"], datetime(2024, 1, 2), JAN9)  # type: ignore[arg-type]
