"""Instruments the gateway knows: stocks, FX pairs, futures, continuous futures and indices,
with stable conIds, their market models' parameters and the contractData (10) reply.

An instrument is named by its id (``mdp_core.instruments``): ``AAPL``,
``EUR:CASH:IDEALPRO:USD``, ``ES:FUT:CME:USD:202503``, ``ES:CONTFUT:CME``, ``SPX:IND:CBOE``.
"""

from __future__ import annotations

import calendar
import zlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from mdp_core.gateway.codec import encode
from mdp_core.gateway.market import MarketModel
from mdp_core.gateway.protocol import ContractSpec, Out
from mdp_core.instruments import InstrumentSpec, parse_instrument

__all__ = ["Instrument", "con_id_for", "contract_data", "model_params"]

# Real IB conIds of a few well-known US stocks/ETFs, so logs look familiar.
_KNOWN_CON_IDS = {
    "AAPL": 265598, "MSFT": 272093, "SPY": 756733, "GOOGL": 208813719, "AMZN": 3691937,
    "TSLA": 76792991, "NVDA": 4815747, "QQQ": 320227571,
}  # fmt: skip
_ARCA = {"SPY", "IWM", "DIA", "GLD", "TLT"}
# Futures: base price, tick size, multiplier.
_FUTURES: dict[str, tuple[float, float, str]] = {
    "ES": (5000.0, 0.25, "50"), "MES": (5000.0, 0.25, "5"), "NQ": (17500.0, 0.25, "20"),
    "YM": (38000.0, 1.0, "5"), "RTY": (2000.0, 0.1, "50"), "CL": (75.0, 0.01, "1000"),
    "GC": (2000.0, 0.1, "100"), "ZN": (110.0, 0.015625, "1000"), "6E": (1.08, 0.00005, "125000"),
}  # fmt: skip
_INDICES = {"SPX": 4800.0, "NDX": 17000.0, "DJX": 380.0, "RUT": 2000.0, "VIX": 15.0}
# FX: price of one unit of the base currency in the quote currency.
_FX = {
    ("EUR", "USD"): 1.08, ("GBP", "USD"): 1.27, ("AUD", "USD"): 0.66, ("NZD", "USD"): 0.61,
    ("USD", "JPY"): 150.0, ("USD", "CHF"): 0.88, ("USD", "CAD"): 1.36, ("EUR", "GBP"): 0.85,
    ("EUR", "JPY"): 162.0,
}  # fmt: skip
_MONTH_CODES = "FGHJKMNQUVXZ"
_TIME_ZONES = {"CMES": "US/Central", "24/5": "US/Eastern"}


def con_id_for(symbol: str) -> int:
    """A conId that is the same for instrument id ``symbol`` on every run (CRC32-derived if not
    well known)."""
    return _KNOWN_CON_IDS.get(symbol) or 400_000_000 + zlib.crc32(symbol.encode()) % 500_000_000


def model_params(spec: InstrumentSpec) -> dict[str, Any]:
    """Keyword arguments of ``RandomWalkModel`` that make ``spec`` look like its market: base
    price, tick size and lot size (no base price: a seeded one)."""
    if spec.sec_type == "CASH":
        price = _FX.get((spec.symbol, spec.currency))
        tick = 0.005 if spec.currency == "JPY" else 0.00005
        return {"base_price": price or 1.0, "tick_size": tick, "lot_size": 10_000.0}
    if spec.sec_type in ("FUT", "CONTFUT"):
        price, tick, _ = _FUTURES.get(spec.symbol, (100.0, 0.01, "1"))
        return {"base_price": price, "tick_size": tick, "lot_size": 1.0}
    if spec.sec_type == "IND":
        return {"base_price": _INDICES.get(spec.symbol, 1000.0), "lot_size": 1.0}
    return {}


def _third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(calendar.FRIDAY - first.weekday()) % 7 + 14)


@dataclass(eq=False)
class Instrument:
    """A tradable instrument: its id (``symbol``), contract identity, whether live data is
    permitted, and its market model."""

    symbol: str
    con_id: int
    model: MarketModel
    live: bool = True
    spec: InstrumentSpec = field(init=False)

    def __post_init__(self) -> None:
        self.spec = parse_instrument(self.symbol)

    @property
    def primary_exchange(self) -> str:
        if self.spec.sec_type != "STK":
            return self.spec.exchange
        return "ARCA" if self.spec.symbol in _ARCA else "NASDAQ"

    @property
    def has_trades(self) -> bool:
        """FX has quotes only: IB has no TRADES data for it."""
        return self.spec.sec_type != "CASH"

    @property
    def last_trade_date(self) -> str:
        """A future's last trading day (``YYYYMMDD``; the contract month's third Friday)."""
        expiry = self.spec.expiry
        if len(expiry) == 6:
            return _third_friday(int(expiry[:4]), int(expiry[4:])).strftime("%Y%m%d")
        return expiry

    @property
    def local_symbol(self) -> str:
        s = self.spec
        if s.sec_type == "CASH":
            return f"{s.symbol}.{s.currency}"
        if s.sec_type == "FUT":
            return f"{s.symbol}{_MONTH_CODES[int(s.expiry[4:6]) - 1]}{s.expiry[3]}"
        return s.symbol

    def matches(self, spec: ContractSpec) -> bool:
        """Whether a request's contract designates this instrument (conId wins if given)."""
        s = self.spec
        if spec.con_id:
            return spec.con_id == self.con_id and spec.symbol.upper() in ("", s.symbol)
        sec_type = spec.sec_type.upper() or "STK"
        if spec.symbol.upper() != s.symbol or sec_type != s.sec_type:
            return False
        if spec.currency.upper() not in ("", s.currency):
            return False
        if s.sec_type != "STK" and spec.exchange.upper() not in ("", s.exchange):
            return False  # a stock is found on any exchange (SMART routes)
        if s.sec_type == "FUT" and spec.last_trade:
            asked = spec.last_trade.strip()
            return asked in (s.expiry, s.expiry[:6], self.last_trade_date)
        return True


def contract_data(req_id: int, inst: Instrument, exchange: str) -> bytes:
    """contractData (10) at server version >= 164 (no version field; int fields as ints)."""
    s = inst.spec
    stock = s.sec_type == "STK"
    etf = stock and s.symbol in _ARCA
    future = s.sec_type in ("FUT", "CONTFUT")
    trading_class = s.symbol if not stock else (s.symbol if etf else "NMS")
    if s.sec_type == "CASH":
        trading_class = inst.local_symbol
    multiplier = _FUTURES.get(s.symbol, (0.0, 0.0, "1"))[2] if future else ""
    min_tick = getattr(inst.model, "tick_size", 0.01)
    return encode(
        Out.CONTRACT_DATA,
        req_id,
        s.symbol,
        s.sec_type,
        inst.last_trade_date if s.sec_type == "FUT" else "",  # lastTradeDate
        0.0,  # strike
        "",  # right
        exchange or s.exchange,
        s.currency,
        inst.local_symbol,
        trading_class,  # marketName
        trading_class,  # tradingClass
        inst.con_id,
        min_tick,
        multiplier,
        "ACTIVETIM,LMT,MKT,STP",  # orderTypes
        f"SMART,{inst.primary_exchange}" if stock else s.exchange,  # validExchanges
        1,  # priceMagnifier
        0,  # underConId
        f"{inst.local_symbol} (simulated)",  # longName
        inst.primary_exchange,
        s.expiry[:6] if s.sec_type == "FUT" else "",  # contractMonth
        "Simulated",  # industry
        "",  # category
        "",  # subcategory
        _TIME_ZONES.get(s.calendar, "US/Eastern"),  # timeZoneId
        "",  # tradingHours
        "",  # liquidHours
        "",  # evRule
        "",  # evMultiplier (int field: empty or an int)
        0,  # number of secIds
        1,  # aggGroup
        "",  # underSymbol
        "",  # underSecType
        "26",  # marketRuleIds
        inst.last_trade_date if s.sec_type == "FUT" else "",  # realExpirationDate
        ("ETF" if etf else "COMMON") if stock else "",  # stockType
        "1",  # minSize
        "1",  # sizeIncrement
        "1" if not stock else "100",  # suggestedSizeIncrement
    )
