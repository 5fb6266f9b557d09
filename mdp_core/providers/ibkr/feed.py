"""``ProviderFeed``: runs an injected provider object (``provider.MarketDataProvider``) into
the stream's edge.

Guarantees:
- every record the object yields is counted as received at the edge, then delivered
  (waiting for room when the channel is full: the object's iterator is simply not advanced,
  so nothing is dropped under ``block``) or, if it is not a ``Quote`` (quotes) / ``Bar``
  (bars), dropped as ``invalid`` with a warning naming what came and what was expected;
- the stream ends when the object's iterator ends; an exception from it fails the stream
  (``ProviderError`` from ``stream()``);
- ``stop()`` stops the pump and calls the object's ``close()`` within the graceful timeout.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

from mdp_core.edge import Edge
from mdp_core.logs import logger
from mdp_core.models import Bar, Quote
from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr.state import IBKRIssue, State
from mdp_core.providers.ibkr.timers import SYSTEM_CLOCK, Clock, within

__all__ = ["ProviderFeed"]


class ProviderFeed:
    """See the module docstring. ``resolution``: the bar resolution asked of the object."""

    def __init__(
        self,
        provider: Any,
        symbols: list[str],
        mode: str,
        resolution: str | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.provider = provider
        self.symbols = symbols
        self.mode = mode
        self.resolution = resolution
        self.clock = clock
        self.state: State = "new"
        self.errors: deque[IBKRIssue] = deque(maxlen=200)
        self.counts: Counter[str] = Counter()
        self._edge: Edge[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._close_edge = False

    async def start(self, edge: Edge[Any], close_edge: bool) -> None:
        """Ask the object for its stream and pump it into ``edge`` in the background."""
        if self.state != "new":
            raise ProviderError("this IBKR source was already started: create a new source")
        self._edge = edge
        self._close_edge = close_edge
        if self.mode == "quotes":
            stream = self.provider.stream_quotes(list(self.symbols))
        else:
            stream = self.provider.stream_bars(list(self.symbols), self.resolution)
        if inspect.isawaitable(stream) and not hasattr(stream, "__aiter__"):
            stream = await stream  # ``async def stream_quotes(...)`` returning an iterator
        if not hasattr(stream, "__aiter__"):
            self.state = "failed"
            raise ProviderError(
                f"provider {type(self.provider).__name__}.stream_{self.mode} returned "
                f"{type(stream).__name__}: expected an async iterator"
            )
        self.state = "streaming"
        self._task = asyncio.create_task(self._pump(stream, edge), name="ibkr-provider-feed")

    async def _pump(self, stream: Any, edge: Edge[Any]) -> None:
        expected = Quote if self.mode == "quotes" else Bar
        try:
            async for record in stream:
                if isinstance(record, expected):
                    await edge.put(record)
                    continue
                edge.receive()
                edge.drop("invalid")
                self.counts["invalid"] += 1
                logger.warning(
                    "ibkr: provider {} yielded {!r}: expected a {}; left out",
                    type(self.provider).__name__, record, expected.__name__,
                )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state = "failed"
            error = ProviderError(
                f"provider {type(self.provider).__name__} failed: {type(exc).__name__}: {exc}"
            )
            self.errors.append(IBKRIssue(datetime.now(UTC), None, str(error), ()))
            logger.error("ibkr: {}", error)
            edge.close(error)
            return
        if not self._stopping:
            self.state = "stopped"
        edge.close()  # the object's stream ended: so does ours

    async def stop(self, timeout: float) -> None:
        """Stop pumping and close the object within ``timeout`` seconds. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        if not await within(self.clock, timeout, self._teardown()):
            logger.warning("ibkr: stopping the provider took longer than {}s", timeout)
        if self.state != "failed":
            self.state = "stopped"

    async def _teardown(self) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            await self.provider.close()
        finally:
            if self._close_edge and self._edge is not None:
                self._edge.close()

    def stale_symbols(self) -> list[str]:
        """Always empty: the object watches its own data."""
        return []

    def stats(self) -> dict[str, Any]:
        """State, records received at the edge and those left out as invalid."""
        edge = self._edge
        return {
            "state": self.state,
            "mode": self.mode,
            "symbols": len(self.symbols),
            "provider": type(self.provider).__name__,
            "received": edge.received if edge is not None else 0,
            "invalid": self.counts["invalid"],
        }

    def summary(self) -> str:
        """One line for the log when the stream stops."""
        received = self._edge.received if self._edge is not None else 0
        return f"received {received}, invalid {self.counts['invalid']}"
