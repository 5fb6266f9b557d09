"""``IBKROptions``: how an IBKR source streams, in one frozen object (the connection itself,
host, port, client id, timeouts and backoff, comes from ``IBKRSettings``).

    IBKRStreamSource(["AAPL"], mode="bars", options=IBKROptions(what_to_show="MIDPOINT"))

Every value is checked when the options are built: a bad one raises ``ValueError`` naming
it and what was expected, before anything connects.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from mdp_core.channel import Channel, ChannelOverflow
from mdp_core.providers.ibkr.records import BAR_SECONDS
from mdp_core.providers.ibkr.timers import SYSTEM_CLOCK, Clock, Sleep, system_sleep
from mdp_core.providers.ibkr.watchdog import MarketOpen

__all__ = ["WHAT_TO_SHOW", "IBKROptions", "split_options"]

WHAT_TO_SHOW = ("TRADES", "MIDPOINT", "BID", "ASK")


@dataclass(frozen=True, kw_only=True)
class IBKROptions:
    """The knobs of an IBKR source (all optional).

    Attributes:
        channel_capacity, channel_overflow: the channel ``stream()`` reads when the source
            is used on its own, without a runtime (which otherwise attaches the stream's
            edge). ``channel_overflow=None``: ``conflate`` for quotes, ``block`` for bars.
        what_to_show: ``TRADES`` (default), ``MIDPOINT``, ``BID`` or ``ASK`` (bars).
        use_rth: regular trading hours only (None: ``IBKRSettings.use_rth``).
        contract_factory: symbol -> ib_async contract (default: the instrument id's,
            ``mdp_core.providers.ibkr.contracts.contract_for``: ``AAPL`` is ``Stock("AAPL",
            "SMART", "USD")``, ``EUR:CASH:IDEALPRO:USD`` the EUR.USD pair, ...). Records keep
            the requested symbol. Bars of FX (``secType`` CASH) are MIDPOINT when
            ``what_to_show`` is TRADES: IB has no FX trades.
        generic_ticks: ``genericTickList`` of ``reqMktData``.
        backfill: after a reconnect or resubscription (bars), fetch the missed 5-second
            bars with ``reqHistoricalData``; ``max_backfill_seconds`` caps the gap asked
            for, ``backfill_timeout`` bounds each request.
        resume_after: bars mode: per symbol, the start of the last 5-second bar already
            stored (e.g. read from the table by ``Pipeline``). The first subscription then
            backfills every complete bar after it, so bars missed while no stream ran are
            not lost; anything at or before it is dropped as a duplicate.
        watchdog, stale_after, resubscribe_after, market_open: the staleness watchdog
            (off with ``watchdog=False``); thresholds in seconds of silence during market
            hours (None: ``IBKRSettings.stale_after`` and 4x that); ``market_open``
            replaces the exchange calendar (``IBKRSettings.exchange_calendar``).
        reconnect: reconnect after a lost connection (default True); ``rng`` and ``sleep``
            make the reconnect backoff deterministic in tests.
        clock: the monotonic clock and sleep of the other timers (staleness watchdog,
            graceful stop, rate-limited warnings); tests inject a fake one.
        read_chunk: feed ib_async's decoder at most this many bytes at a time (None: as
            received). ib_async consumes its receive buffer by re-slicing ``bytes``, which is
            quadratic in the size of one read, and a client that fell behind gets reads of
            up to 256 KiB; chunking keeps it linear. A chunk is also the unit of a quote:
            trades of a symbol in one chunk fold into one quote. 2 KiB (~70 messages)
            folds few when many symbols stream and still spreads the per-read cost
            (``benchmarks/bench_ibkr.py`` measures 2 KiB against 8 KiB and none).
        source: the ``source`` field of the records.
    """

    channel_capacity: int = 10_000
    channel_overflow: ChannelOverflow | None = None
    what_to_show: str = "TRADES"
    use_rth: bool | None = None
    contract_factory: Callable[[str], Any] | None = None
    generic_ticks: str = ""
    backfill: bool = True
    resume_after: Mapping[str, datetime] | None = None
    max_backfill_seconds: int = 3600
    backfill_timeout: float = 30.0
    watchdog: bool = True
    stale_after: float | None = None
    resubscribe_after: float | None = None
    market_open: MarketOpen | None = None
    reconnect: bool = True
    rng: random.Random | None = None
    sleep: Sleep = field(default=system_sleep)
    clock: Clock = field(default=SYSTEM_CLOCK)
    read_chunk: int | None = 2048
    source: str = "ibkr"

    def __post_init__(self) -> None:
        what = self.what_to_show.upper() if isinstance(self.what_to_show, str) else None
        if what not in WHAT_TO_SHOW:
            raise ValueError(
                f"what_to_show {self.what_to_show!r} is invalid: expected one of "
                f"{', '.join(WHAT_TO_SHOW)}"
            )
        object.__setattr__(self, "what_to_show", what)
        chunk = self.read_chunk
        if chunk is not None and (not isinstance(chunk, int) or chunk < 64):
            raise ValueError(f"read_chunk {chunk!r}: expected bytes >= 64, or None")
        most = self.max_backfill_seconds
        if not (isinstance(most, int) and most >= BAR_SECONDS):
            raise ValueError(f"max_backfill_seconds {most!r}: expected an int >= 5")
        if not (isinstance(self.backfill_timeout, int | float) and self.backfill_timeout > 0):
            raise ValueError(f"backfill_timeout {self.backfill_timeout!r}: expected seconds > 0")
        Channel(self.channel_capacity, self.channel_overflow or "block")  # validates both

    def overflow_for(self, mode: str) -> ChannelOverflow:
        """The channel overflow policy of a source in ``mode`` used on its own."""
        if self.channel_overflow is not None:
            return self.channel_overflow
        return "conflate" if mode == "quotes" else "block"


_FIELDS = frozenset(f.name for f in fields(IBKROptions))


def split_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keyword arguments (a ``streams.yaml`` entry's ``provider_options``, say) as the
    source's arguments: the ``IBKROptions`` fields among them gathered into ``options=``.
    Other names are left for the source, which rejects the unknown ones (``TypeError``)."""
    rest = {k: v for k, v in kwargs.items() if k not in _FIELDS}
    picked = {k: v for k, v in kwargs.items() if k in _FIELDS}
    if picked:
        if rest.get("options") is not None:
            raise TypeError(
                f"{', '.join(sorted(picked))} given both on their own and with options=: "
                "pass them in one place"
            )
        rest["options"] = IBKROptions(**picked)
    return rest
