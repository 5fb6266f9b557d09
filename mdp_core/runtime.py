"""RuntimeOrchestrator: runs providers and pumps their records into bounded channels.

```python
async with RuntimeOrchestrator() as rt:              # provider from MDP_PROVIDER, default "ibkr"
    bars = await rt.bars_to_channel(["AAPL", "MSFT"], resolution="5s", max_buffer=2048)
    async for bar in bars.iter():
        ...
```

Each ``*_to_channel`` call builds one provider, starts it, and owns one task that copies
``provider.stream()`` into a new ``Channel`` with ``await channel.put(...)`` (so under the
``block`` policy a slow consumer slows the provider instead of losing data). When the
stream ends the channel is closed; when the provider fails, the channel is closed with
that exception, which the consumer gets once it has drained the buffered items: a
failure never looks like the end of the data.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from mdp_core.channel import Channel, ChannelClosed, ChannelStats, Overflow
from mdp_core.logs import logger
from mdp_core.models import Bar, Quote, Record, parse_resolution
from mdp_core.providers.base import ProviderSource
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.settings import MdpSettings, get_settings
from mdp_core.windows import can_roll_up

__all__ = ["RuntimeOrchestrator", "StreamStats"]

State = Literal["running", "finished", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A snapshot of one provider -> channel stream."""

    name: str
    provider: str
    mode: str
    symbols: list[str]
    resolution: str | None  # of the channel's bars (None for quotes)
    native_resolution: str | None  # of the provider's bars, when resampled
    state: State
    pumped: int  # records put into the channel
    error: str | None
    uptime: float  # seconds since the stream started
    channel: ChannelStats
    resample: dict[str, int] | None  # resample_bars counters, when resampling


@dataclass(slots=True)
class _Stream:
    name: str
    provider_name: str
    provider: ProviderSource
    channel: Channel[Any]
    resolution: str | None
    native_resolution: str | None
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    state: State = "running"
    pumped: int = 0
    error: BaseException | None = None
    resample_stats: Any = None


class RuntimeOrchestrator:
    """Builds providers from a ``ProviderRegistry`` and pumps each into its own channel.

    ``stop()`` (also on leaving ``async with``) stops every provider, waits up to
    ``graceful_cancel_timeout`` seconds (default ``MdpSettings().graceful_cancel_timeout``)
    for the pumps to finish, cancels what is left and closes every channel; it is
    idempotent. A stopped orchestrator refuses new streams.
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
        overflow: Overflow = "block",
        **provider_kwargs: Any,
    ) -> Channel[Quote]:
        """Start ``provider`` (default: settings) streaming quotes of ``symbols`` into a new
        channel of ``max_buffer`` items; extra keywords go to the provider."""
        return await self._open(symbols, "quotes", None, max_buffer, provider, overflow,
                                provider_kwargs)  # fmt: skip

    async def bars_to_channel(
        self,
        symbols: str | Iterable[str],
        resolution: str = "5s",
        max_buffer: int = 2048,
        provider: str | None = None,
        overflow: Overflow = "block",
        **provider_kwargs: Any,
    ) -> Channel[Bar]:
        """Start ``provider`` streaming ``resolution`` bars of ``symbols`` into a new channel.

        If the provider's bars are finer, they are rolled up with ``resample_bars``; the
        requested resolution must then be a multiple of the provider's (else ``ValueError``).
        """
        return await self._open(symbols, "bars", parse_resolution(resolution), max_buffer,
                                provider, overflow, provider_kwargs)  # fmt: skip

    async def _open(
        self,
        symbols: str | Iterable[str],
        mode: str,
        resolution: str | None,
        max_buffer: int,
        provider: str | None,
        overflow: Overflow,
        provider_kwargs: dict[str, Any],
    ) -> Channel[Any]:
        if self._stopped:
            raise RuntimeError("RuntimeOrchestrator is stopped: create a new one")
        name = provider or self.settings.provider
        channel: Channel[Any] = Channel(max_buffer, overflow)  # validates before any start
        kwargs: dict[str, Any] = {"symbols": symbols, "mode": mode, **provider_kwargs}
        if resolution is not None:
            kwargs["bar_resolution"] = resolution
        source = self.registry.build(name, **kwargs)
        native = source.resolution if mode == "bars" else None
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
        try:
            await source.start()
        except BaseException:
            await _quietly_stop(source, self.graceful_cancel_timeout)
            raise
        stream = _Stream(
            name=f"{name}:{mode}#{next(self._numbers)}",
            provider_name=name,
            provider=source,
            channel=channel,
            resolution=resolution,
            native_resolution=native if native != resolution else None,
        )
        stream.task = asyncio.create_task(self._pump(stream), name=f"mdp-pump-{stream.name}")
        self._streams.append(stream)
        detail = f" from {native} bars" if stream.native_resolution else ""
        logger.info(
            "stream {} started: {} {} {}{} -> channel({}, {})",
            stream.name, ",".join(source.symbols), mode, resolution or "", detail,
            max_buffer, overflow,
        )  # fmt: skip
        return channel

    async def _pump(self, stream: _Stream) -> None:
        """Copy the provider's records into the channel; close it with the outcome, then stop
        the provider."""
        records: AsyncIterator[Record] = stream.provider.stream()
        if stream.native_resolution is not None:
            from mdp_core.operators import OperatorStats, resample_bars

            stream.resample_stats = OperatorStats()
            records = resample_bars(
                records,  # type: ignore[arg-type]
                stream.resolution,  # type: ignore[arg-type]
                on_late=lambda bar: logger.warning("stream {}: late bar {}", stream.name, bar),
                stats=stream.resample_stats,
            )
        channel = stream.channel
        put = channel.put
        try:
            async for record in records:
                await put(record)
                stream.pumped += 1
        except asyncio.CancelledError:
            stream.state = "stopped"
            channel.close()
            raise
        except ChannelClosed:
            stream.state = "stopped"  # closed by its consumer: nothing more to deliver
            logger.info("stream {}: channel closed by its consumer", stream.name)
        except Exception as exc:
            stream.state, stream.error = "failed", exc
            logger.error("stream {} failed: {}: {}", stream.name, type(exc).__name__, exc)
            channel.close(exc)
        else:
            stream.state = "stopped" if self._stopped else "finished"
            channel.close()
            logger.info("stream {} {} after {} records", stream.name, stream.state, stream.pumped)
        finally:
            if not channel.closed:  # BaseException (KeyboardInterrupt...): still end the stream
                channel.close()
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
        """Stop every provider and pump within ``graceful_cancel_timeout``; cancel the rest.

        Idempotent; every channel is closed when it returns (buffered items stay readable).
        """
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
                    "{} stream(s) did not stop within {}s: cancelled", len(pending), timeout
                )
                _, stuck = await asyncio.wait(pending, timeout=timeout)
                for task in stuck:
                    logger.error("stream task {} ignores cancellation", task.get_name())
        for s in streams:
            s.channel.close()
            if s.state == "running":
                s.state = "stopped"
        if first:
            logger.info("runtime stopped {} stream(s)", len(streams))

    # -- observing -----------------------------------------------------------------------------

    def stats(self) -> dict[str, StreamStats]:
        """Per stream (by name): provider, state, records pumped, channel and resample counters."""
        now = time.monotonic()
        out: dict[str, StreamStats] = {}
        for s in self._streams:
            out[s.name] = StreamStats(
                name=s.name,
                provider=s.provider_name,
                mode=s.provider.mode,
                symbols=list(s.provider.symbols),
                resolution=s.resolution,
                native_resolution=s.native_resolution,
                state=s.state,
                pumped=s.pumped,
                error=None if s.error is None else f"{type(s.error).__name__}: {s.error}",
                uptime=now - s.started,
                channel=s.channel.stats,
                resample=s.resample_stats.as_dict() if s.resample_stats is not None else None,
            )
        return out


async def _quietly_stop(source: ProviderSource, timeout: float) -> None:
    """``source.stop()`` bounded by ``timeout``; failures are logged, never raised."""
    try:
        async with asyncio.timeout(timeout):
            await source.stop()
    except TimeoutError:
        logger.warning("{!r}.stop() took longer than {}s", source, timeout)
    except Exception as exc:
        logger.warning("{!r}.stop() failed: {}: {}", source, type(exc).__name__, exc)
