"""The request handlers of a session, one module per concern, and ``HANDLERS``: which
function answers which TWS message id.

A handler takes the session's ``ClientState`` and the request's fields (field 0 is the msg
id) and returns the frames to send in reply (possibly none); it may add or drop
subscriptions, which the pump then streams. startApi is the session's own (``Session``).
"""

from __future__ import annotations

from collections.abc import Callable

from mdp_core.gateway.client import ClientState
from mdp_core.gateway.handlers import account, contracts, historical, market_data
from mdp_core.gateway.protocol import In

__all__ = ["HANDLERS", "Handler"]

Handler = Callable[[ClientState, list[str]], list[bytes]]

HANDLERS: dict[int, Handler] = {
    # account and housekeeping
    In.REQ_POSITIONS: account.req_positions,
    In.REQ_OPEN_ORDERS: account.req_open_orders,
    In.REQ_COMPLETED_ORDERS: account.req_completed_orders,
    In.REQ_ACCOUNT_UPDATES: account.req_account_updates,
    In.REQ_ACCOUNT_UPDATES_MULTI: account.req_account_updates_multi,
    In.REQ_EXECUTIONS: account.req_executions,
    In.REQ_ACCOUNT_SUMMARY: account.req_account_summary,
    In.REQ_CURRENT_TIME: account.req_current_time,
    In.REQ_IDS: account.req_ids,
    In.REQ_MANAGED_ACCTS: account.req_managed_accts,
    In.REQ_MARKET_DATA_TYPE: account.req_market_data_type,
    In.REQ_AUTO_OPEN_ORDERS: account.no_reply,
    In.CANCEL_POSITIONS: account.no_reply,
    In.CANCEL_ACCOUNT_SUMMARY: account.no_reply,
    In.CANCEL_ACCOUNT_UPDATES_MULTI: account.no_reply,
    # contracts
    In.REQ_CONTRACT_DATA: contracts.req_contract_details,
    # streaming market data
    In.REQ_MKT_DATA: market_data.req_mkt_data,
    In.CANCEL_MKT_DATA: market_data.cancel_mkt_data,
    In.REQ_REAL_TIME_BARS: market_data.req_real_time_bars,
    In.CANCEL_REAL_TIME_BARS: market_data.cancel_real_time_bars,
    # historical data
    In.REQ_HISTORICAL_DATA: historical.req_historical_data,
    In.CANCEL_HISTORICAL_DATA: historical.cancel_historical_data,
}
