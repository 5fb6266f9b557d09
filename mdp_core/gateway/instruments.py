"""Instruments the gateway knows: stable conIds and the contractData (10) reply."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from mdp_core.gateway.codec import encode
from mdp_core.gateway.market import MarketModel
from mdp_core.gateway.protocol import ContractSpec, Out

__all__ = ["Instrument", "con_id_for", "contract_data"]

# Real IB conIds of a few well-known US stocks/ETFs, so logs look familiar.
_KNOWN_CON_IDS = {
    "AAPL": 265598, "MSFT": 272093, "SPY": 756733, "GOOGL": 208813719, "AMZN": 3691937,
    "TSLA": 76792991, "NVDA": 4815747, "QQQ": 320227571,
}  # fmt: skip
_ARCA = {"SPY", "IWM", "DIA", "GLD", "TLT"}


def con_id_for(symbol: str) -> int:
    """A conId that is the same for ``symbol`` on every run (CRC32-derived if not well known)."""
    return _KNOWN_CON_IDS.get(symbol) or 400_000_000 + zlib.crc32(symbol.encode()) % 500_000_000


@dataclass(eq=False)
class Instrument:
    """A tradable symbol: its contract identity, whether live data is permitted, its model."""

    symbol: str
    con_id: int
    model: MarketModel
    live: bool = True

    @property
    def primary_exchange(self) -> str:
        return "ARCA" if self.symbol in _ARCA else "NASDAQ"

    def matches(self, spec: ContractSpec) -> bool:
        """Whether a request's contract designates this instrument (conId wins if given)."""
        if spec.con_id:
            return spec.con_id == self.con_id and spec.symbol.upper() in ("", self.symbol)
        return (
            spec.symbol.upper() == self.symbol
            and spec.sec_type.upper() in ("", "STK")
            and spec.currency.upper() in ("", "USD")
        )


def contract_data(req_id: int, inst: Instrument, exchange: str) -> bytes:
    """contractData (10) at server version >= 164 (no version field; int fields as ints)."""
    etf = inst.symbol in _ARCA
    return encode(
        Out.CONTRACT_DATA,
        req_id,
        inst.symbol,
        "STK",
        "",  # lastTradeDate
        0.0,  # strike
        "",  # right
        exchange or "SMART",
        "USD",
        inst.symbol,  # localSymbol
        inst.symbol if etf else "NMS",  # marketName
        inst.symbol if etf else "NMS",  # tradingClass
        inst.con_id,
        0.01,  # minTick
        "",  # multiplier
        "ACTIVETIM,LMT,MKT,STP",  # orderTypes
        f"SMART,{inst.primary_exchange}",  # validExchanges
        1,  # priceMagnifier
        0,  # underConId
        f"{inst.symbol} (simulated)",  # longName
        inst.primary_exchange,
        "",  # contractMonth
        "Simulated",  # industry
        "",  # category
        "",  # subcategory
        "US/Eastern",  # timeZoneId
        "",  # tradingHours
        "",  # liquidHours
        "",  # evRule
        "",  # evMultiplier (int field: empty or an int)
        0,  # number of secIds
        1,  # aggGroup
        "",  # underSymbol
        "",  # underSecType
        "26",  # marketRuleIds
        "",  # realExpirationDate
        "ETF" if etf else "COMMON",  # stockType
        "1",  # minSize
        "1",  # sizeIncrement
        "100",  # suggestedSizeIncrement
    )
