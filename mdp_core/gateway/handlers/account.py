"""Account and housekeeping requests: positions, orders and executions (always none), account
values and summary, current time, next order id, managed accounts, market data type."""

from __future__ import annotations

from datetime import UTC, datetime

from mdp_core.gateway.client import ClientState
from mdp_core.gateway.codec import encode
from mdp_core.gateway.protocol import Out, parse_req_id
from mdp_core.gateway.state import GatewayState
from mdp_core.logs import logger

__all__ = [
    "managed_accounts",
    "no_reply",
    "req_account_summary",
    "req_account_updates",
    "req_account_updates_multi",
    "req_completed_orders",
    "req_current_time",
    "req_executions",
    "req_ids",
    "req_managed_accts",
    "req_market_data_type",
    "req_open_orders",
    "req_positions",
]

_ACCOUNT_VALUES = {
    "NetLiquidation": "1000000.00",
    "TotalCashValue": "1000000.00",
    "BuyingPower": "4000000.00",
    "AvailableFunds": "1000000.00",
    "ExcessLiquidity": "1000000.00",
}


def managed_accounts(state: GatewayState) -> bytes:
    """managedAccounts (15): the gateway's accounts, comma-separated."""
    return encode(Out.MANAGED_ACCTS, 1, ",".join(state.accounts))


def no_reply(client: ClientState, fields: list[str]) -> list[bytes]:
    """Requests answered with nothing (cancellations of what sends nothing, auto open orders)."""
    return []


def req_positions(client: ClientState, fields: list[str]) -> list[bytes]:
    return [encode(Out.POSITION_END, 1)]


def req_open_orders(client: ClientState, fields: list[str]) -> list[bytes]:
    return [encode(Out.OPEN_ORDER_END, 1)]


def req_completed_orders(client: ClientState, fields: list[str]) -> list[bytes]:
    return [encode(Out.COMPLETED_ORDERS_END)]


def req_executions(client: ClientState, fields: list[str]) -> list[bytes]:
    return [encode(Out.EXECUTION_DATA_END, 1, parse_req_id(fields, 2))]


def req_current_time(client: ClientState, fields: list[str]) -> list[bytes]:
    return [encode(Out.CURRENT_TIME, 1, int(client.state.now()))]


def req_ids(client: ClientState, fields: list[str]) -> list[bytes]:
    return [encode(Out.NEXT_VALID_ID, 1, client.next_order_id)]


def req_managed_accts(client: ClientState, fields: list[str]) -> list[bytes]:
    return [managed_accounts(client.state)]


def req_account_updates(client: ClientState, fields: list[str]) -> list[bytes]:
    """The account's values, update time and download end; nothing for an unsubscribe."""
    if len(fields) < 4 or fields[2] != "1":
        return []  # unsubscribe
    state = client.state
    account = fields[3] or state.accounts[0]
    frames = [
        encode(Out.ACCT_VALUE, 2, key, value, "USD", account)
        for key, value in _ACCOUNT_VALUES.items()
    ]
    hhmm = datetime.fromtimestamp(state.now(), UTC).strftime("%H:%M")
    return [
        *frames,
        encode(Out.ACCT_UPDATE_TIME, 1, hhmm),
        encode(Out.ACCT_DOWNLOAD_END, 1, account),
    ]


def req_account_updates_multi(client: ClientState, fields: list[str]) -> list[bytes]:
    req_id = parse_req_id(fields, 2)
    account = fields[3] if len(fields) > 3 and fields[3] else client.state.accounts[0]
    frames = [
        encode(Out.ACCOUNT_UPDATE_MULTI, 1, req_id, account, "", key, value, "USD")
        for key, value in _ACCOUNT_VALUES.items()
    ]
    return [*frames, encode(Out.ACCOUNT_UPDATE_MULTI_END, 1, req_id)]


def req_account_summary(client: ClientState, fields: list[str]) -> list[bytes]:
    """The asked tags (every tag if none) of every account, then the summary end."""
    req_id = parse_req_id(fields, 2)
    tags = set(fields[4].split(",")) if len(fields) > 4 else set()
    frames = [
        encode(Out.ACCOUNT_SUMMARY, 1, req_id, account, tag, value, "USD")
        for account in client.state.accounts
        for tag, value in _ACCOUNT_VALUES.items()
        if tag in tags or not tags
    ]
    return [*frames, encode(Out.ACCOUNT_SUMMARY_END, 1, req_id)]


def req_market_data_type(client: ClientState, fields: list[str]) -> list[bytes]:
    """Set the client's market data type (1 live .. 4 delayed frozen); no reply."""
    kind = parse_req_id(fields, 2)
    if kind not in (1, 2, 3, 4):
        logger.warning(f"gateway: {client} asked for market data type {kind}; expected 1..4")
        return []
    client.market_data_type = kind
    return []
