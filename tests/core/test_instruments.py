"""Instrument ids: parsing, the canonical stored form, contracts and clear errors."""

from __future__ import annotations

import pytest
from ib_async import Contract

from mdp_core.instruments import InstrumentSpec, canonical_id, parse_instrument
from mdp_core.providers.base import normalize_symbols
from mdp_core.providers.ibkr.contracts import contract_for, what_to_show_for
from mdp_core.streams import StreamSpec


@pytest.mark.parametrize(
    ("text", "spec", "canonical"),
    [
        ("AAPL", InstrumentSpec("AAPL"), "AAPL"),
        (" aapl ", InstrumentSpec("AAPL"), "AAPL"),
        ("AAPL:STK", InstrumentSpec("AAPL"), "AAPL"),
        ("aapl:stk:smart:usd", InstrumentSpec("AAPL"), "AAPL"),
        ("SAP:STK:IBIS:EUR", InstrumentSpec("SAP", "STK", "IBIS", "EUR"), "SAP:STK:IBIS:EUR"),
        ("EUR:CASH", InstrumentSpec("EUR", "CASH", "IDEALPRO", "USD"), "EUR:CASH:IDEALPRO:USD"),
        (
            "eur:cash:idealpro:usd",
            InstrumentSpec("EUR", "CASH", "IDEALPRO"),
            "EUR:CASH:IDEALPRO:USD",
        ),
        (
            "USD:CASH::JPY",
            InstrumentSpec("USD", "CASH", "IDEALPRO", "JPY"),
            "USD:CASH:IDEALPRO:JPY",
        ),
        (
            "ES:FUT:CME:USD:202503",
            InstrumentSpec("ES", "FUT", "CME", "USD", "202503"),
            "ES:FUT:CME:USD:202503",
        ),
        (
            "es:fut:cme::20250321",
            InstrumentSpec("ES", "FUT", "CME", "USD", "20250321"),
            "ES:FUT:CME:USD:20250321",
        ),
        ("ES:CONTFUT:CME", InstrumentSpec("ES", "CONTFUT", "CME"), "ES:CONTFUT:CME"),
        ("ES:CONTFUT:CME:USD", InstrumentSpec("ES", "CONTFUT", "CME"), "ES:CONTFUT:CME"),
        ("SPX:IND:CBOE", InstrumentSpec("SPX", "IND", "CBOE"), "SPX:IND:CBOE"),
        ("DAX:IND:EUREX:EUR", InstrumentSpec("DAX", "IND", "EUREX", "EUR"), "DAX:IND:EUREX:EUR"),
    ],
)
def test_ids_parse_to_one_canonical_form(text: str, spec: InstrumentSpec, canonical: str) -> None:
    assert parse_instrument(text) == spec
    assert spec.id == canonical_id(text) == canonical
    assert parse_instrument(canonical) == spec  # the canonical form reads back the same


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("ES:FUT:CME", "needs its expiry"),
        ("ES:FUT:CME:USD:2025-03", "needs its expiry"),
        ("ES:CONTFUT", "needs its exchange"),
        ("SPX:IND", "needs its exchange"),
        ("EUR:FX", "security type 'FX' is not one of"),
        ("ES:CONTFUT:CME:USD:202503", "only a FUT has an expiry"),
        ("EUR:CASH:IDEALPRO:DOLLARS", "currency 'DOLLARS'"),
        ("EUR:CASH:IDEALPRO:EUR", "against itself"),
        (":STK", "symbol ''"),
        ("A:STK:SMART:USD:1:2", "6 parts"),
        ("", "1-64 printable"),
    ],
)
def test_bad_ids_name_the_value_and_the_expected_form(text: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_instrument(text)
    message = str(info.value)
    assert repr(text) in message and why in message
    assert "SYMBOL:SECTYPE[:EXCHANGE[:CURRENCY[:EXPIRY]]]" in message


def test_contracts_what_to_show_and_calendars() -> None:
    fx = contract_for("EUR:CASH")
    assert isinstance(fx, Contract) and type(fx).__name__ == "Forex"
    assert (fx.secType, fx.symbol, fx.currency, fx.exchange) == ("CASH", "EUR", "USD", "IDEALPRO")
    fut = contract_for("ES:FUT:CME:USD:202503")
    assert (type(fut).__name__, fut.lastTradeDateOrContractMonth) == ("Future", "202503")
    assert type(contract_for("ES:CONTFUT:CME")).__name__ == "ContFuture"
    assert type(contract_for("SPX:IND:CBOE")).__name__ == "Index"
    stock = contract_for("AAPL")
    assert (type(stock).__name__, stock.exchange, stock.currency) == ("Stock", "SMART", "USD")
    assert what_to_show_for(fx, "TRADES") == "MIDPOINT"
    assert what_to_show_for(fx, "BID") == "BID"
    assert what_to_show_for(stock, "TRADES") == "TRADES"
    assert parse_instrument("EUR:CASH").what_to_show == "MIDPOINT"
    calendars = [
        parse_instrument(t).calendar
        for t in ("AAPL", "EUR:CASH", "ES:CONTFUT:CME", "SPX:IND:CBOE", "SAP:STK:IBIS:EUR")
    ]
    assert calendars == ["XNYS", "24/5", "CMES", "XNYS", "XETR"]


def test_symbols_everywhere_are_stored_in_canonical_form() -> None:
    assert normalize_symbols("aapl, eur:cash ,ES:CONTFUT:CME:USD,EUR:CASH:IDEALPRO:USD") == [
        "AAPL", "EUR:CASH:IDEALPRO:USD", "ES:CONTFUT:CME",
    ]  # fmt: skip
    spec = StreamSpec(name="fx", symbols=["eur:cash", "es:fut:cme::202503"])
    assert spec.symbols == ["EUR:CASH:IDEALPRO:USD", "ES:FUT:CME:USD:202503"]
    with pytest.raises(ValueError, match="invalid instrument id 'ES:FUT:CME'"):
        StreamSpec(name="bad", symbols=["ES:FUT:CME"])
