"""Instrument ids: one string names a stock, an FX pair, a future, a continuous future or an
index, everywhere (``streams.yaml``, the command line, the stored ``symbol``).

Compact form ``SYMBOL:SECTYPE[:EXCHANGE[:CURRENCY[:EXPIRY]]]``::

    AAPL                      US stock on SMART in USD (a plain symbol stays as it is)
    SAP:STK:IBIS:EUR          a stock elsewhere
    EUR:CASH:IDEALPRO:USD     the EUR.USD FX pair (IDEALPRO and USD are the defaults)
    ES:FUT:CME:USD:202503     a futures contract (expiry YYYYMM or YYYYMMDD)
    ES:CONTFUT:CME            the continuous future (IB serves it for history only)
    SPX:IND:CBOE              an index

``parse_instrument`` reads an id into a frozen ``InstrumentSpec``; ``spec.id`` is the
canonical id (what is stored as ``symbol``): upper-cased, defaults filled in, then written
back as short as it goes without losing anything. ``EUR:CASH`` becomes
``EUR:CASH:IDEALPRO:USD`` (the currency is half of an FX pair, so it is always written),
``ES:CONTFUT:CME:USD`` becomes ``ES:CONTFUT:CME`` (USD is the default), ``AAPL:STK`` and
``AAPL:STK:SMART:USD`` become ``AAPL``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FORM",
    "SEC_TYPES",
    "InstrumentSpec",
    "canonical_id",
    "parse_instrument",
]

SecType = Literal["STK", "CASH", "FUT", "CONTFUT", "IND"]
SEC_TYPES: tuple[SecType, ...] = ("STK", "CASH", "FUT", "CONTFUT", "IND")
FORM = "SYMBOL:SECTYPE[:EXCHANGE[:CURRENCY[:EXPIRY]]]"
_EXAMPLES = "e.g. AAPL, EUR:CASH:IDEALPRO:USD, ES:FUT:CME:USD:202503, ES:CONTFUT:CME, SPX:IND:CBOE"

_DEFAULT_EXCHANGE: dict[str, str] = {"STK": "SMART", "CASH": "IDEALPRO"}
_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9 ._/&-]{0,31}$")
_CODE = re.compile(r"^[A-Z0-9][A-Z0-9._]{0,15}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_EXPIRY = re.compile(r"^\d{6}(\d{2})?$")

# Market sessions of each exchange, by exchange_calendars name (see mdp_core.calendars);
# an exchange not listed falls back to its security type's.
_CALENDAR_BY_EXCHANGE: dict[str, str] = {
    "SMART": "XNYS", "NYSE": "XNYS", "NASDAQ": "XNYS", "ISLAND": "XNYS", "ARCA": "XNYS",
    "AMEX": "XNYS", "BATS": "XNYS", "IEX": "XNYS", "CBOE": "XNYS",
    "CME": "CMES", "GLOBEX": "CMES", "CBOT": "CMES", "ECBOT": "CMES", "NYMEX": "CMES",
    "COMEX": "CMES", "IDEALPRO": "24/5",
    "IBIS": "XETR", "FWB": "XFRA", "LSE": "XLON", "SBF": "XPAR", "AEB": "XAMS", "TSE": "XTKS",
    "TSEJ": "XTKS", "SEHK": "XHKG", "ASX": "XASX",
}  # fmt: skip
_CALENDAR_BY_TYPE: dict[str, str] = {
    "STK": "XNYS", "IND": "XNYS", "FUT": "CMES", "CONTFUT": "CMES", "CASH": "24/5",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """One instrument, with every default filled in (build it with ``parse_instrument``)."""

    symbol: str
    sec_type: SecType = "STK"
    exchange: str = "SMART"
    currency: str = "USD"
    expiry: str = ""

    @property
    def id(self) -> str:
        """The canonical compact id (the stored ``symbol``; see the module docstring)."""
        if self.sec_type == "STK" and self.exchange == "SMART" and self.currency == "USD":
            return self.symbol
        parts = [self.symbol, self.sec_type, self.exchange]
        if self.expiry or self.sec_type == "CASH" or self.currency != "USD":
            parts.append(self.currency)
        if self.expiry:
            parts.append(self.expiry)
        return ":".join(parts)

    @property
    def calendar(self) -> str:
        """The exchange_calendars name of its market's regular sessions (``24/5`` for FX)."""
        return _CALENDAR_BY_EXCHANGE.get(self.exchange, _CALENDAR_BY_TYPE[self.sec_type])

    @property
    def what_to_show(self) -> str:
        """What IB has for it: ``MIDPOINT`` for FX (IB has no trades for it), else ``TRADES``."""
        return "MIDPOINT" if self.sec_type == "CASH" else "TRADES"

    def contract_fields(self) -> dict[str, str]:
        """The ib_async ``Contract`` fields that designate it."""
        fields = {
            "secType": self.sec_type,
            "symbol": self.symbol,
            "exchange": self.exchange,
            "currency": self.currency,
        }
        if self.expiry:
            fields["lastTradeDateOrContractMonth"] = self.expiry
        return fields


def _bad(text: object, why: str) -> ValueError:
    return ValueError(f"invalid instrument id {text!r}: {why}; expected {FORM} ({_EXAMPLES})")


def parse_instrument(text: str) -> InstrumentSpec:
    """The instrument ``text`` names (compact form or a plain stock symbol; any case).

    Raises ``ValueError`` naming the value, what is wrong and the expected form."""
    if not isinstance(text, str):
        raise _bad(text, f"expected a str, got {type(text).__name__}")
    parts = [p.strip() for p in text.strip().upper().split(":")]
    symbol = parts[0]
    if len(parts) == 1:  # a plain stock symbol: the records' symbol rule
        if not symbol or len(symbol) > 64 or not symbol.isprintable():
            raise _bad(text, "a symbol is 1-64 printable characters")
        return InstrumentSpec(symbol)
    if not _SYMBOL.match(symbol):
        raise _bad(text, f"symbol {symbol!r} is not 1-32 letters, digits or . _ / & - space")
    if len(parts) > 5:
        raise _bad(text, f"{len(parts)} parts")
    sec_type, exchange, currency, expiry = [*parts[1:], "", "", ""][:4]
    if sec_type not in SEC_TYPES:
        raise _bad(text, f"security type {sec_type!r} is not one of {', '.join(SEC_TYPES)}")
    exchange = exchange or _DEFAULT_EXCHANGE.get(sec_type, "")
    if not exchange:
        example = f"{symbol}:{sec_type}:CME" + (":USD:202503" if sec_type == "FUT" else "")
        raise _bad(text, f"a {sec_type} needs its exchange (e.g. {example})")
    if not _CODE.match(exchange):
        raise _bad(text, f"exchange {exchange!r} is not a code like SMART, CME or IDEALPRO")
    currency = currency or "USD"
    if not _CURRENCY.match(currency):
        raise _bad(text, f"currency {currency!r} is not a three-letter code like USD")
    if sec_type == "FUT":
        if not _EXPIRY.match(expiry):
            raise _bad(text, f"a FUT needs its expiry as YYYYMM or YYYYMMDD, got {expiry!r}")
    elif expiry:
        raise _bad(text, f"only a FUT has an expiry, not a {sec_type}")
    if sec_type == "CASH" and currency == symbol:
        raise _bad(text, f"an FX pair of {symbol} against itself")
    return InstrumentSpec(symbol, sec_type, exchange, currency, expiry)


def canonical_id(text: str) -> str:
    """``parse_instrument(text).id``: the one spelling stored for that instrument."""
    return parse_instrument(text).id
