"""``GatewayState``: what every session of one simulated gateway shares.

The instruments and their market models, the simulated clock, the limits, the historical
pacing ledger, the fault switches (data paused, stalled, ignored requests), the records of
what was received and sent, and the counters. ``SimulatedGateway`` (``server``) owns one and
hands it to each ``Session``; sessions see nothing else of the server.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Iterable

from mdp_core.gateway.instruments import Instrument, con_id_for
from mdp_core.gateway.market import MarketModel, SimClock
from mdp_core.gateway.protocol import ContractSpec
from mdp_core.gateway.records import RecordedRequest, SentBar, SentTick
from mdp_core.instruments import canonical_id
from mdp_core.providers.ibkr.pacing import PacingLedger

__all__ = ["GatewayState"]


class GatewayState:
    """The instruments, clock, limits, switches, records and counters of one gateway.

    The arguments are ``SimulatedGateway``'s (see there); ``accounts`` must hold at least one
    account and ``max_lines`` be >= 1, else ``ValueError`` naming the value.
    """

    def __init__(
        self,
        clock: SimClock,
        *,
        real_clock: Callable[[], float],
        accounts: Iterable[str],
        max_lines: int,
        pacing_limit: int | None,
        max_frame_bytes: int,
        max_write_buffer: int,
        max_history_bars: int,
        log_size: int,
    ) -> None:
        self.clock = clock
        self.accounts = [a for a in accounts if a]
        if not self.accounts:
            raise ValueError(
                "accounts is empty: expected at least one account (ib_async needs one)"
            )
        if max_lines < 1:
            raise ValueError(f"invalid max_lines {max_lines!r}: expected >= 1")
        self.max_lines = max_lines
        self.pacing_limit = pacing_limit
        self.max_frame_bytes = max_frame_bytes
        self.max_write_buffer = max_write_buffer
        self.max_history_bars = max_history_bars
        #: IB's historical pacing rules and the requests they count (None: not enforced).
        self.history_pacing: PacingLedger | None = None
        self._real_clock = real_clock

        # fault switches
        self.data_paused = False
        self.ignored_requests: set[int] = set()
        self.unstalled = asyncio.Event()  # cleared while the gateway is stalled
        self.unstalled.set()

        # records and counters
        self.requests: deque[RecordedRequest] = deque(maxlen=log_size)
        self.sent_ticks: deque[SentTick] = deque(maxlen=log_size)
        self.sent_bars: deque[SentBar] = deque(maxlen=log_size)
        self.counters: Counter[str] = Counter()  # gateway events
        self.symbol_stats: dict[str, Counter[str]] = {}  # per symbol: ticks, bars, ...

        self.instruments: dict[str, Instrument] = {}
        self.client_ids: set[int] = set()  # of the sessions that started the API, while open

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the gateway event counter ``name``."""
        self.counters[name] += n

    def now(self) -> float:
        """Current simulated time, epoch seconds."""
        return self.clock.now()

    def real_time(self) -> float:
        """The real monotonic clock (pacing is in real time, not simulated time)."""
        return self._real_clock()

    @property
    def stalled(self) -> bool:
        return not self.unstalled.is_set()

    # ---- instruments ---------------------------------------------------------------------

    def add_instrument(self, model: MarketModel, live: bool = True) -> Instrument:
        """Serve ``model.symbol`` from ``model`` (replacing an existing one of that symbol)."""
        con_id = con_id_for(model.symbol)
        clash = [
            i for i in self.instruments.values() if i.con_id == con_id and i.symbol != model.symbol
        ]
        if clash:
            raise ValueError(f"conId {con_id} of {model.symbol} clashes with {clash[0].symbol}")
        inst = Instrument(model.symbol, con_id, model, live)
        self.instruments[model.symbol] = inst
        self.symbol_stats.setdefault(model.symbol, Counter())
        return inst

    @property
    def symbols(self) -> list[str]:
        return list(self.instruments)

    def instrument(self, symbol: str) -> Instrument:
        """The instrument of ``symbol`` (an instrument id, any spelling); KeyError naming the
        known ones otherwise."""
        try:
            return self.instruments[canonical_id(symbol)]
        except (KeyError, ValueError):
            raise KeyError(
                f"unknown symbol {symbol!r}: the gateway serves {self.symbols}"
            ) from None

    def matching(self, spec: ContractSpec) -> list[Instrument]:
        """Every instrument a request's contract designates (more than one: ambiguous)."""
        return [i for i in self.instruments.values() if i.matches(spec)]

    def resolve(self, spec: ContractSpec) -> Instrument | None:
        """The one instrument a request's contract designates; None if none or ambiguous."""
        found = self.matching(spec)
        return found[0] if len(found) == 1 else None
