"""Instrument ids as ib_async contracts (``mdp_core.instruments`` parses the ids; this
module turns them into the library's objects, so only the IBKR side needs the library)."""

from __future__ import annotations

from typing import Any

from mdp_core.instruments import InstrumentSpec, parse_instrument
from mdp_core.providers.ibkr.compat import load_ib_library

__all__ = ["contract_for", "ib_contract", "what_to_show_for"]


def ib_contract(spec: InstrumentSpec) -> Any:
    """An ib_async (or ib_insync) contract for ``spec``; needs the library (``mdp[ibkr]``)."""
    return load_ib_library().module.Contract.create(**spec.contract_fields())


def contract_for(text: str) -> Any:
    """The ib_async contract of an instrument id (the IBKR source's default factory)."""
    return ib_contract(parse_instrument(text))


def what_to_show_for(contract: Any, what_to_show: str) -> str:
    """``what_to_show`` for ``contract``, except ``TRADES`` of FX (``secType`` ``CASH``), which
    IB does not have: ``MIDPOINT`` then."""
    if what_to_show == "TRADES" and getattr(contract, "secType", "") == "CASH":
        return "MIDPOINT"
    return what_to_show
