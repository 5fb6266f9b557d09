"""Historical data from the simulated gateway: every bar size, regular hours, contract types
and IB's pacing rules, against the real ib_async client (pacing on an injected clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ib_async import IB, ContFuture, Contract, Forex, Future, Index, Stock

from mdp_core.calendars import open_intervals
from mdp_core.gateway import RandomWalkModel, SimBar, SimulatedGateway
from mdp_core.gateway.market import MarketModel, aggregate_bars
from tests.gateway.helpers import Client

TIMEOUT = 30
START = datetime(2024, 2, 1, tzinfo=UTC)  # the gateway's simulated "now"
FX, FUT, CONT, IDX = (
    "EUR:CASH:IDEALPRO:USD",
    "ES:FUT:CME:USD:202503",
    "ES:CONTFUT:CME",
    "SPX:IND:CBOE",
)


class FakeClock:
    """The gateway's real clock, moved by hand: pacing windows become deterministic."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def hgw(clock: FakeClock) -> AsyncIterator[SimulatedGateway]:
    """Stocks and the other contract types, simulated time frozen at START, IB's pacing."""
    async with SimulatedGateway(
        symbols=["AAPL", "MSFT", "SPY", FX, FUT, CONT, IDX], port=0, seed=2, start=START,
        clock=clock,
    ) as gateway:  # fmt: skip
        yield gateway


def _sessions(calendar: str, start: float, end: float) -> list[tuple[float, float]]:
    spans = open_intervals(
        calendar, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    )
    return [(lo.timestamp(), hi.timestamp()) for lo, hi in spans]


def _as_tuple(b: Any) -> tuple[Any, ...]:
    when = b.date
    t = (
        int(when.timestamp())
        if isinstance(when, datetime)
        else int(datetime(when.year, when.month, when.day, tzinfo=UTC).timestamp())
    )
    return (t, b.open, b.high, b.low, b.close, b.volume, b.barCount)


def _sim_tuple(b: SimBar) -> tuple[Any, ...]:
    return (b.time, b.open, b.high, b.low, b.close, b.volume, b.count)


def test_window_bars_are_exact_aggregates_of_the_5_second_bars() -> None:
    model = RandomWalkModel("AAPL", seed=4)
    t0 = int(datetime(2024, 1, 9, 13, 0, tzinfo=UTC).timestamp())
    sessions = _sessions("XNYS", t0, t0 + 86_400)
    for what in ("TRADES", "MIDPOINT", "ASK"):
        for seconds in (5, 60, 300, 3600, 86_400):
            for rth in (None, sessions):
                end = t0 + max(6 * 3600, 2 * seconds)
                fast = model.window_bars(t0 - 86_400 * (seconds == 86_400), end, seconds, what, rth)
                slow = MarketModel.window_bars(
                    model, t0 - 86_400 * (seconds == 86_400), end, seconds, what, rth
                )
                assert [_sim_tuple(b) for b in fast] == [_sim_tuple(b) for b in slow]
                assert all(abs(a.wap - b.wap) < 1e-4 for a, b in zip(fast, slow, strict=True))
                assert fast, (what, seconds)
    # and a window is what aggregate_bars makes of the bars it holds
    (hour,) = model.window_bars(t0 + 3600, t0 + 7200, 3600)
    parts = model.bars_between(t0 + 3600, t0 + 7200)
    assert _sim_tuple(hour) == _sim_tuple(aggregate_bars(parts, t0 + 3600, 3600))


@pytest.mark.parametrize(
    ("bar_size", "seconds", "duration", "end"),
    [
        ("5 secs", 5, "3600 S", datetime(2024, 1, 9, 15, tzinfo=UTC)),
        ("1 min", 60, "86400 S", datetime(2024, 1, 10, tzinfo=UTC)),
        ("5 mins", 300, "7 D", datetime(2024, 1, 13, tzinfo=UTC)),
        ("1 hour", 3600, "30 D", datetime(2024, 1, 31, tzinfo=UTC)),
        ("1 day", 86_400, "30 D", datetime(2024, 1, 31, tzinfo=UTC)),
    ],
)
async def test_every_bar_size_with_regular_hours_matches_the_model(
    hgw: SimulatedGateway, bar_size: str, seconds: int, duration: str, end: datetime
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = Client()
        ib = await client.connect(hgw)
        aapl = Stock("AAPL", "SMART", "USD")
        await ib.qualifyContractsAsync(aapl)
        bars = await ib.reqHistoricalDataAsync(
            aapl, end, duration, bar_size, "TRADES", True, formatDate=2
        )
        ib.disconnect()
    lo = end.timestamp() - {"S": 1, "D": 86_400}[duration[-1]] * int(duration.split()[0])
    sessions = _sessions("XNYS", lo, end.timestamp())
    expected = hgw.model("AAPL").window_bars(
        int(lo), int(end.timestamp()), seconds, "TRADES", sessions
    )
    assert [_as_tuple(b) for b in bars] == [_sim_tuple(b) for b in expected]
    open_minutes = sum(hi - lo for lo, hi in sessions) / 60
    if seconds == 60:
        assert len(bars) == open_minutes == 390  # one regular session
    if seconds == 5:
        assert len(bars) == 360  # 14:30-15:00 UTC: the half hour after the open
    if seconds == 86_400:
        assert len(bars) == len(sessions)  # one daily bar per session


async def test_contract_types_qualify_and_serve_what_ib_serves(hgw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = Client()
        ib = await client.connect(hgw)
        fx, fut = Forex("EURUSD"), Future("ES", "202503", "CME")
        cont, spx = ContFuture("ES", "CME"), Index("SPX", "CBOE")
        assert all(await ib.qualifyContractsAsync(fx, fut, cont, spx))
        assert (fx.secType, fx.localSymbol, fx.conId) == (
            "CASH",
            "EUR.USD",
            hgw.instrument(FX).con_id,
        )
        assert (fut.lastTradeDateOrContractMonth, fut.localSymbol, fut.multiplier) == (
            "20250321", "ESH5", "50",
        )  # fmt: skip
        assert cont.secType == "CONTFUT" and cont.conId == hgw.instrument(CONT).con_id
        assert spx.conId == hgw.instrument(IDX).con_id
        end = datetime(2024, 1, 10, tzinfo=UTC)
        trades = await ib.reqHistoricalDataAsync(fx, end, "3600 S", "1 min", "TRADES", False)
        assert len(trades) == 0 and any(
            code == 162 and "use MIDPOINT" in msg for _, code, msg in client.errors
        )
        mids = await ib.reqHistoricalDataAsync(fx, end, "3600 S", "1 min", "MIDPOINT", False)
        assert len(mids) == 60 and all(b.volume == -1 for b in mids)
        assert all(1.0 < b.low <= b.high < 1.2 for b in mids)
        for contract, symbol in ((fut, FUT), (cont, CONT), (spx, IDX)):
            bars = await ib.reqHistoricalDataAsync(
                contract, end, "3600 S", "1 min", "TRADES", False
            )
            expected = hgw.model(symbol).window_bars(
                int(end.timestamp()) - 3600, int(end.timestamp()), 60
            )
            assert [_as_tuple(b) for b in bars] == [_sim_tuple(b) for b in expected]
        es = await ib.reqHistoricalDataAsync(fut, end, "600 S", "1 min", "TRADES", False)
        assert all((b.close * 4).is_integer() for b in es)  # ES trades in quarter points
        unknown = Contract(
            secType="FUT", symbol="ES", exchange="CME", lastTradeDateOrContractMonth="202406"
        )
        assert await ib.qualifyContractsAsync(unknown) == [None]
        ib.disconnect()


async def test_no_data_is_error_162_hmds_query_returned_no_data(hgw: SimulatedGateway) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = Client()
        ib = await client.connect(hgw)
        (aapl,) = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
        saturday = datetime(2024, 1, 14, tzinfo=UTC)  # Jan 13: no session
        bars = await ib.reqHistoricalDataAsync(aapl, saturday, "86400 S", "1 min", "TRADES", True)
        assert len(bars) == 0
        assert any(code == 162 and "returned no data" in msg for _, code, msg in client.errors)
        ib.disconnect()


async def _request(ib: IB, contract: Contract, end: datetime, client: Client) -> str:
    """One 5-minute request: "ok", or the text of the error 162 it got."""
    seen = len(client.errors)
    bars = await ib.reqHistoricalDataAsync(contract, end, "3600 S", "1 min", "TRADES", False)
    if bars:
        return "ok"
    return next(msg for _, code, msg in client.errors[seen:] if code == 162)


async def test_a_naive_client_breaking_each_pacing_rule_gets_error_162(
    hgw: SimulatedGateway, clock: FakeClock
) -> None:
    pacing = "Historical data request pacing violation"
    async with asyncio.timeout(TIMEOUT):
        client = Client()
        ib = await client.connect(hgw)
        stocks = [Stock(s, "SMART", "USD") for s in ("AAPL", "MSFT", "SPY")]
        await ib.qualifyContractsAsync(*stocks)
        base = datetime(2024, 1, 9, 16, tzinfo=UTC)
        aapl = stocks[0]
        # identical request within 15 s
        assert await _request(ib, aapl, base, client) == "ok"
        assert pacing in await _request(ib, aapl, base, client)
        clock.t += 15
        assert await _request(ib, aapl, base, client) == "ok"
        # six requests for the same contract within 2 s: the sixth is refused
        clock.t += 15
        results = [await _request(ib, aapl, base + timedelta(hours=k), client) for k in range(1, 7)]
        assert results[:5] == ["ok"] * 5 and pacing in results[5]
        # more than 60 requests within 10 minutes: the 61st is refused
        clock.t += 600
        results = []
        for k in range(61):
            if k and k % 15 == 0:
                clock.t += 2  # keep the per-contract rule: 5 per contract per 2 s
            contract = stocks[k % 3]
            results.append(await _request(ib, contract, base - timedelta(hours=k), client))
        assert results[:60] == ["ok"] * 60 and pacing in results[60]
        ib.disconnect()
    assert hgw.stats()["events"]["history_pacing_violations"] == 3


async def test_pacing_can_be_scaled_or_turned_off(clock: FakeClock) -> None:
    async with SimulatedGateway(
        symbols=["AAPL"], port=0, start=START, clock=clock, history_pacing_scale=0.01
    ) as gw:
        assert gw.history_pacing is not None and gw.history_pacing.rules.window == 6.0
        client = Client()
        ib = await client.connect(gw)
        (aapl,) = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
        end = datetime(2024, 1, 9, 16, tzinfo=UTC)
        assert await _request(ib, aapl, end, client) == "ok"
        assert "pacing" in await _request(ib, aapl, end, client)
        clock.t += 0.15  # 15 s scaled by 0.01
        assert await _request(ib, aapl, end, client) == "ok"
        ib.disconnect()
    async with SimulatedGateway(
        symbols=["AAPL"], port=0, start=START, clock=clock, history_pacing=None
    ) as gw:
        client = Client()
        ib = await client.connect(gw)
        (aapl,) = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
        assert [await _request(ib, aapl, end, client) for _ in range(3)] == ["ok"] * 3
        ib.disconnect()
