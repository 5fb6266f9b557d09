"""The Interactive Brokers provider: ``IBKRStreamSource`` over ib_async.

Importing this package needs neither ib_async nor ib_insync; building a source does
(``ProviderError`` saying ``pip install 'mdp[ibkr]'`` otherwise), unless it is given a
provider object of its own.

The parts, one concern per module:

- ``source``: ``IBKRStreamSource``, the public face (a ``ProviderSource``);
- ``options``: ``IBKROptions``, how a source streams (one frozen object);
- ``provider``: the seam: the ``MarketDataProvider`` shape of an injectable provider
  object, and ``IBAsyncProvider``, the default one (the ib_async client);
- ``feed``: ``ProviderFeed``, which pumps an injected provider object into the stream;
- ``client``: ``IBClient``, one ib_async connection composed of the parts below;
- ``state``: ``ClientState``, what those parts share;
- ``supervisor``: connect, reconnect with backoff, resubscribe on request, staleness watch;
- ``subscriptions``: qualify, subscribe, backfill gaps, release held bars, resubscribe;
- ``errors``: IB error code -> action (a dispatch table);
- ``conversion``: ticker and bar callbacks -> ``Quote``/``Bar`` at the stream's edge;
- ``flow``: pause reading when the downstream is full; split large socket reads;
- ``timers``: the injectable clock, reconnect backoff, graceful-stop deadline;
- ``watchdog``: per-symbol silence during market hours;
- ``connection``: connecting with errors that say what to do;
- ``records``: per-symbol state and ib_async objects -> records;
- ``contracts``, ``compat``: instrument ids -> contracts; ib_async or ib_insync;
- ``history``, ``pacing``: historical requests and IB's pacing rules (backfill).
"""

from __future__ import annotations

from mdp_core.providers.ibkr.connection import DuplicateClientIdError, IBKRConnectError
from mdp_core.providers.ibkr.options import IBKROptions
from mdp_core.providers.ibkr.provider import IBAsyncProvider, MarketDataProvider
from mdp_core.providers.ibkr.source import IBKRStreamSource
from mdp_core.providers.ibkr.state import IBKRIssue

__all__ = [
    "DuplicateClientIdError",
    "IBAsyncProvider",
    "IBKRConnectError",
    "IBKRIssue",
    "IBKROptions",
    "IBKRStreamSource",
    "MarketDataProvider",
]
