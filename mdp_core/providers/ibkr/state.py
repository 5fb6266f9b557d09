"""``ClientState``: what the parts of one IB client share (one instance per source).

The parts (supervisor, subscriptions, error codes, conversion, flow control) each own one
concern and read or update this object; nothing else is shared between them. It holds the
connection (``ib``), the per-symbol state, the counters ``stats()`` reports, the issues
log, and the flags that describe the moment (``holding``, ``paused``, ``stopping``, ...).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from mdp_core.edge import Edge
from mdp_core.logs import logger
from mdp_core.providers.ibkr.compat import IBLibrary
from mdp_core.providers.ibkr.options import IBKROptions
from mdp_core.providers.ibkr.records import SymbolState
from mdp_core.providers.ibkr.watchdog import StalenessWatchdog
from mdp_core.settings import IBKRSettings

__all__ = ["ClientState", "IBKRIssue", "State"]

State = Literal["new", "connecting", "streaming", "reconnecting", "stopped", "failed"]
_LOG_EVERY = 10.0  # seconds between repeated warnings (paused reading, invalid records)


@dataclass(frozen=True, slots=True)
class IBKRIssue:
    """An error or warning the source reported (kept in ``source.errors``)."""

    at: datetime
    code: int | None
    message: str
    symbols: tuple[str, ...] = ()


class ClientState:
    """The shared state of one IB client (see the module docstring)."""

    def __init__(
        self,
        symbols: list[str],
        mode: str,
        requested: str | None,
        settings: IBKRSettings,
        options: IBKROptions,
        lib: IBLibrary,
        ib: Any,
    ) -> None:
        self.symbols = symbols
        self.mode = mode
        self.requested = requested  # the stream's bar resolution (None: quotes)
        self.settings = settings
        self.options = options
        self.lib = lib
        self.ib: Any = ib
        self.clock = options.clock
        self.host, self.port, self.client_id = settings.host, settings.port, settings.client_id
        self.state: State = "new"
        self.edge: Edge[Any] | None = None
        self.errors: deque[IBKRIssue] = deque(maxlen=200)
        self.unknown_symbols: list[str] = []
        self.counts: Counter[str] = Counter()
        self.codes: Counter[int] = Counter()
        self.by_symbol = {symbol: SymbolState(symbol) for symbol in symbols}
        self.by_subscription: dict[int, SymbolState] = {}  # id(Ticker or bar list) -> state
        # req id -> the error IB reported for it: ib_async ends a failed request with an
        # empty result instead of raising (RaiseRequestErrors is off by default).
        self.request_errors: dict[int, str] = {}
        self.watchdog: StalenessWatchdog | None = None
        self.holding = False  # live bars held while a backfill runs
        self.paused = False  # socket reading paused: the channel is full
        self.stopping = False
        self.disconnected = False
        self._warned_at: dict[str, float] = {}

    def where(self) -> str:
        """The endpoint, for messages: ``host:port client N``."""
        return f"{self.host}:{self.port} client {self.client_id}"

    def issue(self, code: int | None, message: str, symbols: Iterable[str] = ()) -> None:
        """Keep an error or warning in ``errors`` (the last 200)."""
        self.errors.append(IBKRIssue(datetime.now(UTC), code, message, tuple(symbols)))

    def warn_rarely(self, key: str, message: str, *args: Any) -> None:
        """Log a warning at most every ``_LOG_EVERY`` seconds per ``key``."""
        now = self.clock.now()
        if now - self._warned_at.get(key, -math.inf) >= _LOG_EVERY:
            self._warned_at[key] = now
            logger.warning(message, *args)

    def invalid(self, symbol: str, exc: Exception) -> None:
        """A received update that cannot become a record: dropped as ``invalid``, counted
        (the caller counted it as received)."""
        assert self.edge is not None
        self.edge.drop("invalid")
        self.counts["invalid"] += 1
        self.warn_rarely(
            "invalid", "ibkr: invalid data for {} left out ({} so far): {}",
            symbol, self.counts["invalid"], exc,
        )  # fmt: skip
