"""A simulated IB Gateway speaking the real TWS API wire protocol (server version 178).

Real, unmodified ib_async clients connect to it over TCP. Market data comes from
deterministic models (seeded random walks or replayed real minute bars) on a simulated
clock, so tests know exactly which ticks and 5-second bars exist for any period.

    from mdp_core.gateway import SimulatedGateway

    async with SimulatedGateway(symbols=["AAPL"], port=0, time_compression=60.0) as gw:
        ...  # connect ib_async to 127.0.0.1:gw.port

The command line is ``mdp gateway`` (see ``mdp gateway --help``).

Modules, from the socket inwards:

- ``server``: ``SimulatedGateway``: the listening socket, the sessions, the fault API;
- ``control``: the text commands of ``SimulatedGateway.control`` and ``mdp gateway``;
- ``pump``: the task that streams what became due to every session;
- ``session``: one connection: handshake, read loop, startApi, request dispatch;
- ``handlers``: the answer to each request, by concern (account, contracts, market data,
  historical data), and the table of which message id goes where;
- ``client``: one client's subscriptions and what each pump owes them;
- ``state``: ``GatewayState``, what all sessions share (instruments, clock, limits, fault
  switches, records, counters); ``records``: the records kept for assertions;
- ``protocol`` (message ids, request layouts, reply builders), ``codec`` (framing),
  ``history`` (historical request values), ``instruments`` (contracts);
- ``endpoint``: ``ibkr_endpoint``, the configured IB or else a simulated gateway, for
  scripts that should run unchanged on a laptop and against a real IB Gateway;
- ``market`` (``SimClock``, ``MarketModel``, ``ReplayModel``) and ``random_walk``: the data.
"""

from __future__ import annotations

from mdp_core.gateway.endpoint import IBKREndpoint, ibkr_endpoint
from mdp_core.gateway.market import (
    BAR_SECONDS,
    MarketModel,
    MinuteRow,
    ReplayModel,
    SimBar,
    SimClock,
    SimTick,
    aggregate_bars,
    load_minute_file,
)
from mdp_core.gateway.random_walk import RandomWalkModel
from mdp_core.gateway.server import (
    CONTROL_HELP,
    RecordedRequest,
    SentBar,
    SentTick,
    SessionInfo,
    SimulatedGateway,
)

__all__ = [
    "BAR_SECONDS",
    "CONTROL_HELP",
    "IBKREndpoint",
    "MarketModel",
    "MinuteRow",
    "RandomWalkModel",
    "RecordedRequest",
    "ReplayModel",
    "SentBar",
    "SentTick",
    "SessionInfo",
    "SimBar",
    "SimClock",
    "SimTick",
    "SimulatedGateway",
    "aggregate_bars",
    "ibkr_endpoint",
    "load_minute_file",
]
