"""RuntimeOrchestrator: runs providers and hands their records to bounded channels.

```python
async with RuntimeOrchestrator() as rt:              # provider from MDP_PROVIDER, default "ibkr"
    bars = await rt.bars_to_channel(["AAPL", "MSFT"], resolution="5s", max_buffer=2048)
    async for bar in bars.iter():
        ...
```

Each ``*_to_channel`` call builds one provider, gives it the ``Edge`` of a new ``Channel``
(where its records are counted as received, and folded into coarser bars when the
requested resolution is coarser than the provider's own) and starts it:

- a push provider (IBKR) writes into the edge from its callbacks: the channel is the one
  buffer between the provider and its consumer;
- a pull provider (a file, a generator) gets a pump task that copies ``provider.stream()``
  into the edge, waiting for room under the ``block`` policy, so a slow consumer slows the
  provider instead of losing data.

When the stream ends the channel is closed; when the provider fails, the channel is closed
with that exception, which the consumer gets once it has drained the buffered items: a
failure never looks like the end of the data. ``stop()`` never cancels a record away: a pump
cancelled while it waits for room still puts its record in.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from mdp_core.channel import Channel, ChannelOverflow, ChannelStats
from mdp_core.edge import Edge
from mdp_core.logs import logger
from mdp_core.models import Bar, Quote, parse_resolution
from mdp_core.providers.base import ProviderSource
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.session_windows import SESSION_RESOLUTION, check_session_input
from mdp_core.settings import MdpSettings, get_settings
from mdp_core.windows import can_roll_up

__all__ = ["RuntimeOrchestrator", "StreamStats"]

StreamState = Literal["running", "finished", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A snapshot of one provider -> channel stream."""

    name: str
    provider: str
    mode: str
    symbols: list[str]
    resolution: str | None  # of the channel's bars (None for quotes)
    native_resolution: str | None  # of the provider's bars, when resampled
    state: StreamState
    received: int  # records the provider handed over (counted at the edge)
    dropped: dict[str, int]  # received records that left at the edge, by policy
    error: str | None
    uptime: float  # seconds since the stream started
    channel: ChannelStats


@dataclass(slots=True)
class _Stream:
    name: str
    provider_name: str
    provider: ProviderSource[Any]
    channel: Channel[Any]
    edge: Edge[Any]
    resolution: str | None
    native_resolution: str | None
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None  # the pump of a pull provider
    state: StreamState = "running"
    error: BaseException | None = None


class RuntimeOrchestrator:
    """Builds providers from a ``ProviderRegistry`` and connects each to its own channel.

    ``stop()`` (also on leaving ``async with``) stops every provider, waits up to
    ``graceful_cancel_timeout`` seconds (default ``MdpSettings().graceful_cancel_timeout``)
    for the pumps to finish, cancels what is left (a record in hand still goes into its
    channel) and closes every channel; it is idempotent. A stopped orchestrator refuses new
    streams.
    """

    def __init__(
        self,
        registry: ProviderRegistry | None = None,
        settings: MdpSettings | None = None,
        graceful_cancel_timeout: float | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.registry = registry or ProviderRegistry()
        timeout = graceful_cancel_timeout
        if timeout is None:
            timeout = self.settings.graceful_cancel_timeout
        if not timeout > 0:
            raise ValueError(
                f"graceful_cancel_timeout {timeout!r} is invalid: expected seconds > 0"
            )
        self.graceful_cancel_timeout = float(timeout)
        self._streams: list[_Stream] = []
        self._numbers = itertools.count(1)
        self._stopped = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- streams -------------------------------------------------------------------------------

    async def quotes_to_channel(
        self,
        symbols: str | Iterable[str],
        max_buffer: int = 4096,
        provider: str | None = None,
        overflow: ChannelOverflow | None = None,
        **provider_kwargs: Any,
    ) -> Channel[Quote]:
        """Start ``provider`` (default: settings) streaming quotes of ``symbols`` into a new
        channel of ``max_buffer`` items; extra keywords go to the provider. ``overflow``
        defaults to what the provider asks for (IBKR quotes: ``conflate``), else ``block``."""
        return await self._open(symbols, "quotes", None, max_buffer, provider, overflow,
                                provider_kwargs)  # fmt: skip

    async def bars_to_channel(
        self,
        symbols: str | Iterable[str],
        resolution: str = "5s",
        max_buffer: int = 2048,
        provider: str | None = None,
        overflow: ChannelOverflow | None = None,
        sessions: str | None = None,
        **provider_kwargs: Any,
    ) -> Channel[Bar]:
        """Start ``provider`` streaming ``resolution`` bars of ``symbols`` into a new channel.

        If the provider's bars are finer, they are rolled up at the edge; the requested
        resolution must then be a multiple of the provider's (else ``ValueError``).
        ``sessions`` (an exchange calendar, with ``resolution="1d"``): one bar per session
        of that exchange instead of per UTC day, from provider bars of 1m or finer.
        """
        resolution = parse_resolution(resolution)
        if sessions is not None and resolution != SESSION_RESOLUTION:
            raise ValueError(
                f"sessions {sessions!r} needs resolution '1d' (got {resolution!r}): session "
                "bars are daily bars"
            )
        return await self._open(symbols, "bars", resolution, max_buffer, provider, overflow,
                                provider_kwargs, sessions)  # fmt: skip

    async def _open(
        self,
        symbols: str | Iterable[str],
        mode: str,
        resolution: str | None,
        max_buffer: int,
        provider: str | None,
        overflow: ChannelOverflow | None,
        provider_kwargs: dict[str, Any],
        sessions: str | None = None,
    ) -> Channel[Any]:
        if self._stopped:
            raise RuntimeError("RuntimeOrchestrator is stopped: create a new one")
        name = provider or self.settings.provider
        if overflow is not None:
            Channel(max_buffer, overflow)  # validates before anything is built
        kwargs: dict[str, Any] = {"symbols": symbols, "mode": mode, **provider_kwargs}
        if resolution is not None:
            kwargs["bar_resolution"] = resolution
        source = self.registry.build(name, **kwargs)
        native = getattr(source, "resolution", None) if mode == "bars" else None
        if (
            resolution is not None
            and native is not None
            and native != resolution
            and not can_roll_up(native, resolution)
        ):
            raise ValueError(
                f"provider {name!r} delivers {native} bars: resolution {resolution!r} "
                f"cannot be made from them (expected a multiple of {native})"
            )
        if sessions is not None and native is not None:
            check_session_input(native, sessions)
        policy = overflow or source.default_overflow.get(mode, "block")
        channel: Channel[Any] = Channel(max_buffer, policy)  # type: ignore[arg-type]
        resampled = (native is not None and native != resolution) or sessions is not None
        stream_name = f"{name}:{mode}#{next(self._numbers)}"
        edge: Edge[Any] = Edge(channel, resolution=resolution if resampled else None,
                               sessions=sessions, name=stream_name)  # fmt: skip
        source.attach(edge)
        try:
            await source.start()
        except BaseException:
            await _quietly_stop(source, self.graceful_cancel_timeout)
            raise
        stream = _Stream(
            name=stream_name,
            provider_name=name,
            provider=source,
            channel=channel,
            edge=edge,
            resolution=resolution,
            native_resolution=native if resampled else None,
        )
        if not source.push:
            stream.task = asyncio.create_task(self._pump(stream), name=f"mdp-pump-{stream.name}")
        self._streams.append(stream)
        detail = f" from {native} bars" if stream.native_resolution else ""
        if sessions is not None:
            detail += f" per {sessions} session"
        logger.info(
            "stream {} started: {} {} {}{} -> channel({}, {})",
            stream.name, ",".join(getattr(source, "symbols", [])), mode, resolution or "",
            detail, max_buffer, policy,
        )  # fmt: skip
        return channel

    async def _pump(self, stream: _Stream) -> None:
        """Copy a pull provider's records into its edge; close the edge with the outcome,
        then stop the provider."""
        records: AsyncIterator[Any] = stream.provider.stream()
        edge, channel = stream.edge, stream.channel
        put = edge.put
        try:
            async for record in records:
                await put(record)
                if channel.closed:  # closed by its consumer: nothing more to deliver
                    stream.state = "stopped"
                    logger.info("stream {}: channel closed by its consumer", stream.name)
                    break
        except asyncio.CancelledError:
            stream.state = "stopped"
            edge.close()
            raise
        except Exception as exc:
            stream.state, stream.error = "failed", exc
            logger.error("stream {} failed: {}: {}", stream.name, type(exc).__name__, exc)
            edge.close(exc)
        else:
            if stream.state == "running":
                stream.state = "stopped" if self._stopped else "finished"
            edge.close()
            logger.info("stream {} {} after {} records", stream.name, stream.state, edge.received)
        finally:
            if not channel.closed:  # BaseException (KeyboardInterrupt...): still end the stream
                edge.close()
            aclose = getattr(records, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception as exc:  # the outcome is already recorded above
                    logger.warning("stream {}: closing the provider stream: {}", stream.name, exc)
        # Ended, failed or abandoned by its consumer: release the provider (stop is idempotent).
        await _quietly_stop(stream.provider, self.graceful_cancel_timeout)

    # -- stopping ------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop every provider, let the pumps deliver what they hold (cancelling those still
        running after ``graceful_cancel_timeout``: a record in hand still goes in), then
        close every channel. Idempotent; buffered items stay readable."""
        first = not self._stopped
        self._stopped = True
        streams = list(self._streams)
        if not streams:
            return
        timeout = self.graceful_cancel_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if first:
            await asyncio.gather(*(_quietly_stop(s.provider, timeout) for s in streams))
        tasks = [s.task for s in streams if s.task is not None and not s.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            if pending:
                logger.warning(
                    "{} stream(s) did not end within {}s of their provider's stop: cancelled "
                    "(records in hand were still delivered)",
                    len(pending),
                    timeout,
                )
                _, stuck = await asyncio.wait(pending, timeout=timeout)
                for task in stuck:
                    logger.error("stream task {} ignores cancellation", task.get_name())
        for s in streams:
            s.edge.close()
            if s.state == "running":
                s.state = "stopped"
        if first:
            logger.info("runtime stopped {} stream(s)", len(streams))

    # -- observing -----------------------------------------------------------------------------

    def providers(self) -> list[ProviderSource[Any]]:
        """The providers of the streams opened so far."""
        return [s.provider for s in self._streams]

    def stats(self) -> dict[str, StreamStats]:
        """Per stream (by name): provider, state, records received at the edge, what left
        there by policy, and the channel's counters."""
        now = time.monotonic()
        out: dict[str, StreamStats] = {}
        for s in self._streams:
            state: StreamState = s.state
            error = s.error or s.edge.error
            if error is not None:
                state = "failed"
            out[s.name] = StreamStats(
                name=s.name,
                provider=s.provider_name,
                mode=getattr(s.provider, "mode", ""),
                symbols=list(getattr(s.provider, "symbols", [])),
                resolution=s.resolution,
                native_resolution=s.native_resolution,
                state=state,
                received=s.edge.received,
                dropped=dict(s.edge.dropped),
                error=None if error is None else f"{type(error).__name__}: {error}",
                uptime=now - s.started,
                channel=s.channel.stats(),
            )
        return out


async def _quietly_stop(source: ProviderSource[Any], timeout: float) -> None:
    """``source.stop()`` bounded by ``timeout``; failures are logged, never raised."""
    try:
        async with asyncio.timeout(timeout):
            await source.stop()
    except TimeoutError:
        logger.warning("{!r}.stop() took longer than {}s", source, timeout)
    except Exception as exc:
        logger.warning("{!r}.stop() failed: {}: {}", source, type(exc).__name__, exc)
