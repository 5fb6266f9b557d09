"""Historical data requests: reqHistoricalData (bars of any size built from the 5-second
bars, regular trading hours, keepUpToDate), IB's historical pacing, and the cancellation.
The keepUpToDate updates are streamed by the pump (``ClientState.pump``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mdp_core.calendars import open_intervals
from mdp_core.gateway.client import ClientState, HistorySub
from mdp_core.gateway.codec import encode
from mdp_core.gateway.history import (
    format_bar_date,
    format_range_time,
    parse_bar_size,
    parse_duration,
    parse_end,
)
from mdp_core.gateway.instruments import Instrument
from mdp_core.gateway.market import BAR_SECONDS, WHAT_TO_SHOW, MarketModel, SimBar, bars_in_windows
from mdp_core.gateway.protocol import (
    HistoricalDataRequest,
    Out,
    error_msg,
    error_text,
    parse_req_id,
)
from mdp_core.logs import logger
from mdp_core.providers.ibkr.history import MAX_DURATION

__all__ = ["cancel_historical_data", "req_historical_data"]


def req_historical_data(client: ClientState, fields: list[str]) -> list[bytes]:
    """The bars of the requested period (and, with keepUpToDate, a subscription to updates
    of the last one); errors 200 (unknown contract) and 162 (pacing violation, invalid or
    too long request, no data)."""
    req = HistoricalDataRequest.parse(fields)
    req_id, state = req.req_id, client.state
    inst = state.resolve(req.contract)
    if inst is None:
        return [error_msg(req_id, 200)]
    refusal = _pace(client, req, inst)
    if refusal is not None:
        return [refusal]
    now = state.now()
    try:
        seconds, duration, end = _checked(req, inst, now, state.max_history_bars)
    except ValueError as exc:
        return [error_msg(req_id, 162, error_text(162, str(exc)))]
    start = end - duration
    bars = _bars(req, inst, start, end, seconds)
    if not bars:
        detail = (
            f"HMDS query returned no data: {inst.local_symbol}@{inst.spec.exchange} "
            f"{req.what_to_show.title()}"
        )
        return [error_msg(req_id, 162, error_text(162, detail))]
    rows: list[Any] = []
    for b in bars:
        date = format_bar_date(b.time, seconds, req.format_date)
        rows += [date, b.open, b.high, b.low, b.close, b.volume, b.wap, b.count]
    state.symbol_stats[inst.symbol]["history_bars"] += len(bars)
    frames = [
        encode(
            Out.HISTORICAL_DATA,
            req_id,
            format_range_time(start),
            format_range_time(end),
            len(bars),
            *rows,
        )
    ]
    if req.keep_up_to_date:
        window = int(now // seconds) * seconds
        client.history[req_id] = HistorySub(
            req_id, inst, seconds, req.what_to_show, req.format_date, window, window
        )
    return frames


def cancel_historical_data(client: ClientState, fields: list[str]) -> list[bytes]:
    client.history.pop(parse_req_id(fields, 2), None)
    return []


def _checked(
    req: HistoricalDataRequest, inst: Instrument, now: float, max_history_bars: int
) -> tuple[int, int, float]:
    """(bar seconds, duration seconds, end) of a request IB would serve; else ValueError
    saying why not, as IB's error 162 does."""
    seconds = parse_bar_size(req.bar_size)
    duration = parse_duration(req.duration)
    end = min(parse_end(req.end, now), now)
    if req.what_to_show not in WHAT_TO_SHOW:
        raise ValueError(f"unsupported whatToShow {req.what_to_show!r}: expected {WHAT_TO_SHOW}")
    if req.what_to_show == "TRADES" and not inst.has_trades:
        raise ValueError(
            f"No historical market data for {inst.local_symbol}/CASH@"
            f"{inst.spec.exchange} Trades: FX has no trades; use MIDPOINT, BID or ASK"
        )
    if req.keep_up_to_date and req.end.strip():
        raise ValueError("End date not supported with live updates")
    longest = MAX_DURATION.get(seconds)
    if longest is not None and duration > longest:
        raise ValueError(
            f"duration {req.duration!r} is longer than IB serves for "
            f"{req.bar_size!r} bars ({longest} S)"
        )
    if duration / BAR_SECONDS > max_history_bars:
        raise ValueError(
            f"duration {req.duration!r} spans more than {max_history_bars} 5-second bars"
        )
    return seconds, duration, end


def _bars(
    req: HistoricalDataRequest, inst: Instrument, start: float, end: float, seconds: int
) -> list[SimBar]:
    """The bars of ``[start, end)`` (within the exchange's sessions if useRTH); with
    keepUpToDate and none, the latest window that has some."""
    sessions = (
        [
            (lo.timestamp(), hi.timestamp())
            for lo, hi in open_intervals(
                inst.spec.calendar,
                datetime.fromtimestamp(start, UTC),
                datetime.fromtimestamp(end, UTC),
            )
        ]
        if req.use_rth
        else None
    )
    bars = bars_in_windows(inst.model, int(start), int(end), seconds, req.what_to_show, sessions)
    if not bars and req.keep_up_to_date:
        # ib_async ignores keepUpToDate updates after an empty first answer
        bars = _latest_window(inst.model, int(start), seconds, req.what_to_show)
    return bars


def _latest_window(model: MarketModel, before: int, seconds: int, what: str) -> list[SimBar]:
    w = before // seconds * seconds
    for _ in range(64):
        bars = bars_in_windows(model, w - seconds, w, seconds, what)
        if bars:
            return bars
        w -= seconds
    return []


def _pace(client: ClientState, req: HistoricalDataRequest, inst: Instrument) -> bytes | None:
    """Error 162 if the request breaks IB's historical pacing rules (then it does not
    count); else count it and return None."""
    state = client.state
    ledger = state.history_pacing
    if ledger is None:
        return None
    now = state.real_time()
    ledger.prune(now)
    contract = (inst.symbol, req.contract.exchange.upper(), req.what_to_show)
    request = (
        inst.symbol, req.end, req.bar_size, req.duration, req.use_rth, req.what_to_show,
        req.format_date, req.keep_up_to_date,
    )  # fmt: skip
    rule = ledger.violation(now, contract, request)
    if rule is None:
        ledger.add(contract, request, now)
        return None
    state.count("history_pacing_violations")
    logger.warning(f"gateway: {client} broke IB's historical pacing ({rule}); answering error 162")
    return error_msg(req.req_id, 162, error_text(162, "Historical data request pacing violation"))
