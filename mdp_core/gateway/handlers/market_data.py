"""Streaming market data requests: reqMktData (ticks; snapshots too) and reqRealTimeBars
(5-second bars), and their cancellations. The pump (``ClientState.pump``) streams them."""

from __future__ import annotations

from mdp_core.gateway.client import BarSub, ClientState, TickSub
from mdp_core.gateway.codec import encode
from mdp_core.gateway.market import BAR_SECONDS, WHAT_TO_SHOW
from mdp_core.gateway.protocol import (
    MktDataRequest,
    Out,
    RealTimeBarsRequest,
    error_msg,
    error_text,
    parse_req_id,
)

__all__ = [
    "cancel_mkt_data",
    "cancel_real_time_bars",
    "req_mkt_data",
    "req_real_time_bars",
]


def req_mkt_data(client: ClientState, fields: list[str]) -> list[bytes]:
    """Subscribe (or answer a snapshot): market data type, tick parameters and the last
    tick so far; errors 200 (unknown contract), 322 (duplicate id), 101 (no line left)."""
    req = MktDataRequest.parse(fields)
    req_id, state = req.req_id, client.state
    inst = state.resolve(req.contract)
    if inst is None:
        return [error_msg(req_id, 200)]
    if req_id in client.ticks:
        return [error_msg(req_id, 322)]
    if not req.snapshot and client.lines_used() >= state.max_lines:
        return [error_msg(req_id, 101)]
    delayed = client.market_data_type in (3, 4) or not inst.live
    frames = [error_msg(req_id, 10167)] if delayed else []
    frames.append(encode(Out.MARKET_DATA_TYPE, 1, req_id, 3 if delayed else 1))
    frames.append(encode(Out.TICK_REQ_PARAMS, req_id, 0.01, "9c0001", 3))
    now = state.now()
    rt_volume = "233" in req.generic_ticks.split(",")
    sub = TickSub(
        req_id, inst, delayed, rt_volume, state.symbol_stats[inst.symbol], inst.has_trades
    )
    sub.seek(now)
    if not state.data_paused:
        last = inst.model.last_tick_before(now)
        if last is not None:
            frames.extend(client.tick_burst(sub, last))
    if req.snapshot:
        frames.append(encode(Out.TICK_SNAPSHOT_END, 1, req_id))
    else:
        client.ticks[req_id] = sub
    return frames


def cancel_mkt_data(client: ClientState, fields: list[str]) -> list[bytes]:
    """Unsubscribe; error 300 if there is no such subscription."""
    req_id = parse_req_id(fields, 2)
    if client.ticks.pop(req_id, None) is None:
        return [error_msg(req_id, 300, error_text(300, str(req_id)))]
    return []


def req_real_time_bars(client: ClientState, fields: list[str]) -> list[bytes]:
    """Subscribe to 5-second bars from the current one on; errors 200, 322, 420 (not 5
    seconds, or TRADES of FX), 321 (unknown whatToShow), 101 (no line left)."""
    req = RealTimeBarsRequest.parse(fields)
    req_id, state = req.req_id, client.state
    inst = state.resolve(req.contract)
    if inst is None:
        return [error_msg(req_id, 200)]
    if req_id in client.bars:
        return [error_msg(req_id, 322)]
    if req.bar_size != BAR_SECONDS:
        detail = f"bar size {req.bar_size} is not supported; only 5 seconds"
        return [error_msg(req_id, 420, error_text(420, detail))]
    if req.what_to_show not in WHAT_TO_SHOW:
        return [error_msg(req_id, 321)]
    if req.what_to_show == "TRADES" and not inst.has_trades:
        detail = f"no TRADES for {inst.local_symbol} (FX): use MIDPOINT, BID or ASK"
        return [error_msg(req_id, 420, error_text(420, detail))]
    if client.lines_used() >= state.max_lines:
        return [error_msg(req_id, 101)]
    cursor = int(state.now() // BAR_SECONDS) * BAR_SECONDS
    client.bars[req_id] = BarSub(req_id, inst, req.what_to_show, cursor)
    return []


def cancel_real_time_bars(client: ClientState, fields: list[str]) -> list[bytes]:
    client.bars.pop(parse_req_id(fields, 2), None)
    return []
