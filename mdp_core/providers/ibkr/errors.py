"""IB's error codes -> what the client does about them (one dispatch table).

| code | meaning | action |
| 1100 | connectivity between IB and TWS lost | logged, kept as an issue |
| 1101 | connectivity restored, data lost | resubscribe every symbol |
| 1102 | connectivity restored, data kept | bars: resubscribe (backfills the gap) |
| 2103 | a market data farm is broken | remembered |
| 2104 | the farm is OK again | after 2103, bars: resubscribe (backfills the gap) |
| quiet codes | notices that need no reaction | debug log |
| anything else | an error or warning (IB's split) | logged, kept as an issue |

Every code is counted (``stats()["errors_by_code"]``), and a request's error is kept by
request id for the request that waits on it (a refused history request).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mdp_core.logs import logger
from mdp_core.providers.ibkr.state import ClientState

__all__ = ["QUIET_CODES", "WARNING_CODES", "ErrorCodes"]

# Notices that need no reaction: 200 (qualification reports it), 300 (cancelling a
# subscription IB already dropped), 326 (connect_ib reports it), farm OK/inactive notices,
# 10225 (ib_async resubscribes bars after a bust event itself).
QUIET_CODES = frozenset({200, 300, 326, 2104, 2106, 2107, 2108, 2119, 2158, 10225})
# Codes IB (and ib_async) treat as warnings; the rest are errors.
WARNING_CODES = frozenset({105, 110, 165, 321, 329, 399, 404, 434, 492, 10167})

RequestResubscribe = Callable[[Iterable[str], str], None]


class ErrorCodes:
    """``on_error`` is ib_async's ``errorEvent`` handler; ``request_resubscribe(symbols,
    reason)`` asks the supervisor to resubscribe (it never blocks)."""

    def __init__(self, state: ClientState, request_resubscribe: RequestResubscribe) -> None:
        self._st = state
        self._resubscribe = request_resubscribe
        self._farm_broken = False
        self._actions: dict[int, Callable[[str], None]] = {
            1100: self._link_lost,
            1101: self._data_lost,
            1102: self._link_restored,
            2103: self._farm_down,
            2104: self._farm_up,
        }

    def on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        st = self._st
        st.codes[code] += 1
        if req_id is not None and req_id >= 0 and len(st.request_errors) < 10_000:
            st.request_errors[req_id] = f"IB error {code}: {message}"
        action = self._actions.get(code)
        if action is not None:
            action(message)
        elif code in QUIET_CODES:
            logger.debug("ibkr: IB notice {}: {}", code, message)
        else:
            self._report(req_id, code, message, contract)

    def _link_lost(self, message: str) -> None:
        logger.warning("ibkr: IB error 1100 at {}: {}", self._st.where(), message)
        self._st.issue(1100, message)

    def _data_lost(self, message: str) -> None:
        logger.warning("ibkr: IB error 1101 (data lost) at {}: resubscribing", self._st.where())
        self._resubscribe(self._st.symbols, "1101")

    def _link_restored(self, message: str) -> None:
        logger.info("ibkr: IB connectivity restored, data maintained (1102)")
        if self._st.mode == "bars":
            # The subscriptions survived, but no bar came while the link was down (1100):
            # resubscribing backfills that gap from history, as after 1101.
            self._resubscribe(self._st.symbols, "1102 after 1100")

    def _farm_down(self, message: str) -> None:
        self._farm_broken = True
        logger.warning("ibkr: market data farm broken (2103): {}", message)

    def _farm_up(self, message: str) -> None:
        if not self._farm_broken:
            logger.debug("ibkr: IB notice 2104: {}", message)
            return
        self._farm_broken = False
        if self._st.mode == "bars":
            self._resubscribe(self._st.symbols, "2104 after 2103")

    def _report(self, req_id: int, code: int, message: str, contract: Any) -> None:
        st = self._st
        symbol = getattr(contract, "symbol", None) or self._symbol_of(req_id)
        symbols = [symbol] if symbol else []
        where = f" for {symbol}" if symbol else ""
        level = "WARNING" if code in WARNING_CODES or 2100 <= code < 2200 else "ERROR"
        logger.log(level, "ibkr: IB {} {}{} at {}: {}", level.lower(), code, where,
                   st.where(), message)  # fmt: skip
        st.issue(code, message, symbols)

    def _symbol_of(self, req_id: int) -> str | None:
        if req_id is None or req_id < 0:
            return None
        wrapper = getattr(self._st.ib, "wrapper", None)
        ticker = getattr(wrapper, "reqId2Ticker", {}).get(req_id)
        sub = ticker if ticker is not None else getattr(wrapper, "reqId2Subscriber", {}).get(req_id)
        state = self._st.by_subscription.get(id(sub)) if sub is not None else None
        return state.symbol if state is not None else None
