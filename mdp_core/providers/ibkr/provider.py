"""The seam between ``IBKRStreamSource`` and where its data comes from.

``MarketDataProvider`` is the shape of an injectable provider object: async
``stream_quotes(instruments)``, ``stream_bars(instruments, resolution)`` (async iterators of
``Quote``/``Bar``) and ``async close()``. ``IBAsyncProvider`` is the default implementation:
the ib_async (or ib_insync) client, ``IBClient``. The source runs an ``IBAsyncProvider``
through its push path (records built in ib_async's callbacks straight into the stream's
edge); any other provider object is pumped by ``ProviderFeed`` (``feed.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol, runtime_checkable

from mdp_core.channel import Channel
from mdp_core.edge import Edge
from mdp_core.models import Bar, Quote, Record, parse_resolution
from mdp_core.providers.base import normalize_symbols
from mdp_core.providers.ibkr.client import IBClient
from mdp_core.providers.ibkr.options import IBKROptions
from mdp_core.settings import IBKRSettings

__all__ = ["IBAsyncProvider", "MarketDataProvider", "is_provider_object"]


@runtime_checkable
class MarketDataProvider(Protocol):
    """What ``IBKRStreamSource(..., provider=obj)`` needs of ``obj``."""

    def stream_quotes(self, instruments: list[str]) -> AsyncIterator[Quote]: ...

    def stream_bars(self, instruments: list[str], resolution: str) -> AsyncIterator[Bar]: ...

    async def close(self) -> None: ...


def is_provider_object(obj: Any) -> bool:
    """Whether ``obj`` has the ``MarketDataProvider`` shape (an ``IB`` instance does not)."""
    return all(callable(getattr(obj, name, None)) for name in ("stream_quotes", "stream_bars"))


class IBAsyncProvider:
    """The default provider: streams from IB Gateway / TWS through ib_async.

    ``settings``: the connection (``MDP_IBKR_*``); ``options``: how it streams; ``ib``: an
    ``IB`` to use (None: a new one per stream). ``client(symbols, mode, requested)`` builds
    the client the source drives; ``stream_quotes``/``stream_bars`` run one on their own
    channel, for use without a source. ``close()`` stops the streams still open."""

    def __init__(
        self,
        settings: IBKRSettings | None = None,
        options: IBKROptions | None = None,
        ib: Any = None,
        graceful_cancel_timeout: float = 2.0,
    ) -> None:
        self.settings = settings if settings is not None else IBKRSettings()
        self.options = options if options is not None else IBKROptions()
        self.ib = ib
        self.graceful_cancel_timeout = graceful_cancel_timeout
        self._open: set[IBClient] = set()

    def client(self, symbols: list[str], mode: str, requested: str | None) -> IBClient:
        """A new, unstarted client for ``symbols`` (see ``IBClient`` for what it raises)."""
        return IBClient(symbols, mode, requested, self.settings, self.options, self.ib)

    def stream_quotes(self, instruments: Iterable[str]) -> AsyncIterator[Quote]:
        """Quotes of ``instruments`` until ``close()`` or the consumer stops iterating."""
        return self._stream(instruments, "quotes", None)  # type: ignore[return-value]

    def stream_bars(self, instruments: Iterable[str], resolution: str = "5s") -> AsyncIterator[Bar]:
        """Bars of ``instruments`` (a multiple of 5 s) until ``close()`` or the consumer
        stops iterating."""
        return self._stream(instruments, "bars", resolution)  # type: ignore[return-value]

    async def close(self) -> None:
        """Stop every stream still open (each ends after what it received)."""
        for client in list(self._open):
            await client.stop(self.graceful_cancel_timeout)

    async def _stream(
        self, instruments: Iterable[str], mode: str, resolution: str | None
    ) -> AsyncIterator[Record]:
        requested = parse_resolution(resolution) if resolution is not None else None
        client = self.client(normalize_symbols(instruments), mode, requested)
        channel: Channel[Record] = Channel(
            self.options.channel_capacity, self.options.overflow_for(mode)
        )
        resample = requested if requested not in (None, "5s") else None
        edge: Edge[Record] = Edge(channel, resolution=resample, name=f"ibkr:{mode}")
        self._open.add(client)
        try:
            await client.start(edge, close_edge=True)
            async for record in channel.iter():
                yield record
        finally:
            self._open.discard(client)
            await client.stop(self.graceful_cancel_timeout)
