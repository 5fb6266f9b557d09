"""Stream operators: small async-iterator functions to chain after a Channel.

```python
stream = throttle(channel.iter(), rate_limit=500)
stream = deduplicate(stream, key_fn=lambda q: (q.symbol, q.ts), ttl=60.0)
stream = resample_ohlc(stream, get_symbol=lambda q: q.symbol, get_price=lambda q: q.last,
                       get_time=lambda q: q.ts, window="1m")
```

Every operator (aiostream style):

- checks its arguments when called (``ValueError``/``TypeError`` naming the value and what was
  expected), then returns an async iterator;
- closes its upstream (``await upstream.aclose()``) when it ends, fails, is cancelled or is
  closed early by its consumer;
- counts what it does in an optional ``OperatorStats`` (one instance per operator), so that
  conservation can be checked at any moment:

  - throttle:    ``seen == emitted + dropped``
  - deduplicate: ``seen == emitted + duplicates``
  - resample_*:  ``seen == aggregated + late + invalid`` (``emitted`` counts bars)

Time is injectable (``clock``, ``sleep``) so tests run on virtual time. The window logic of
the resamplers lives in ``mdp_core.windows`` (plain classes, no asyncio).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from mdp_core.channel import Channel, ChannelClosed
from mdp_core.logs import logger
from mdp_core.models import Bar
from mdp_core.windows import BarWindows, InvalidEvent, OhlcWindows

__all__ = [
    "OperatorStats",
    "deduplicate",
    "resample_bars",
    "resample_ohlc",
    "throttle",
]

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]
ThrottleMode = Literal["delay", "drop"]

_INF = math.inf
_TOKEN_SLACK = 1e-9  # float tolerance on the token count after a timed wait


@dataclass(slots=True)
class OperatorStats:
    """Counters of one operator (pass a fresh instance to each operator you want to watch).

    ``seen``: items taken from upstream. ``emitted``: items yielded downstream (bars, for the
    resamplers). ``dropped``: items throttle dropped (``mode="drop"``), plus items abandoned
    because the consumer stopped while they were in hand (throttle waiting, or resample's
    read-ahead with ``idle_timeout``). ``delayed``: items throttle held back. ``duplicates``:
    items deduplicate dropped. ``evicted``: keys deduplicate forgot early because of
    ``max_keys``. ``late``: events whose window was already emitted. ``invalid``: events the
    resamplers could not use (bad price, time, volume or symbol). ``aggregated``: events
    folded into a bar.
    """

    seen: int = 0
    emitted: int = 0
    dropped: int = 0
    delayed: int = 0
    duplicates: int = 0
    evicted: int = 0
    late: int = 0
    invalid: int = 0
    aggregated: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# -- helpers -------------------------------------------------------------------------------


def _upstream(stream: AsyncIterable[T], operator: str) -> AsyncIterator[T]:
    if not hasattr(stream, "__aiter__"):
        raise TypeError(
            f"{operator}: stream {stream!r} is a {type(stream).__name__}: "
            "expected an async iterable"
        )
    return aiter(stream)


async def _aclose(upstream: AsyncIterator[Any]) -> None:
    aclose = getattr(upstream, "aclose", None)
    if aclose is not None:
        await aclose()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_callable(operator: str, name: str, value: object, *, optional: bool = False) -> None:
    if (value is None and optional) or callable(value):
        return
    expected = "a callable or None" if optional else "a callable"
    raise TypeError(f"{operator}: {name} {value!r} is not callable: expected {expected}")


def _check_stats(operator: str, stats: object) -> OperatorStats:
    if stats is None:
        return OperatorStats()
    if not isinstance(stats, OperatorStats):
        raise TypeError(f"{operator}: stats {stats!r} is invalid: expected an OperatorStats")
    return stats


# -- throttle ------------------------------------------------------------------------------


def throttle(
    stream: AsyncIterable[T],
    rate_limit: float | None,
    burst: int | None = None,
    mode: ThrottleMode = "delay",
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    stats: OperatorStats | None = None,
) -> AsyncIterator[T]:
    """Limit ``stream`` to ``rate_limit`` items per second with a token bucket.

    The bucket holds ``burst`` tokens (default: one second's worth, ``max(1, int(rate_limit))``)
    and starts full, refilling at ``rate_limit`` tokens per second of ``clock``; each item
    takes one. An item that finds a token passes at once, so a stream under the rate gets
    no added latency. Without a token, ``mode="delay"`` waits (``sleep``) until one is due,
    holding back the upstream (backpressure); ``mode="drop"`` drops the item (counted).
    Over any interval of length ``d`` at most ``burst + rate_limit * d`` items pass.

    ``rate_limit=None`` or ``float("inf")`` means unlimited: the upstream iterator itself is
    returned (zero cost), or a counting pass-through when ``stats`` is given.
    """
    if rate_limit is not None and not (_is_number(rate_limit) and rate_limit > 0):
        raise ValueError(
            f"throttle: rate_limit {rate_limit!r} is invalid: expected items per second > 0, "
            "or None / float('inf') for unlimited"
        )
    if burst is not None and not (
        isinstance(burst, int) and not isinstance(burst, bool) and burst >= 1
    ):
        raise ValueError(f"throttle: burst {burst!r} is invalid: expected an int >= 1 or None")
    if mode not in ("delay", "drop"):
        raise ValueError(f"throttle: mode {mode!r} is invalid: expected 'delay' or 'drop'")
    _check_callable("throttle", "clock", clock)
    _check_callable("throttle", "sleep", sleep)
    upstream = _upstream(stream, "throttle")
    if rate_limit is None or rate_limit == _INF:
        if stats is None:
            return upstream
        return _count_through(upstream, _check_stats("throttle", stats))
    rate = float(rate_limit)
    size = float(burst if burst is not None else max(1, int(rate)))
    return _throttle(
        upstream, rate, size, mode == "drop", clock, sleep, _check_stats("throttle", stats)
    )


async def _count_through(upstream: AsyncIterator[T], stats: OperatorStats) -> AsyncIterator[T]:
    try:
        async for item in upstream:
            stats.seen += 1
            stats.emitted += 1
            yield item
    finally:
        await _aclose(upstream)


async def _throttle(
    upstream: AsyncIterator[T],
    rate: float,
    burst: float,
    drop: bool,
    clock: Clock,
    sleep: Sleep,
    stats: OperatorStats,
) -> AsyncIterator[T]:
    tokens = burst
    last = clock()
    try:
        async for item in upstream:
            stats.seen += 1
            now = clock()
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
            if tokens < 1.0 - _TOKEN_SLACK:
                if drop:
                    stats.dropped += 1
                    continue
                stats.delayed += 1
                try:
                    while tokens < 1.0 - _TOKEN_SLACK:
                        await sleep((1.0 - tokens) / rate)
                        now = clock()
                        tokens = min(burst, tokens + (now - last) * rate)
                        last = now
                except BaseException:
                    stats.dropped += 1  # abandoned while waiting: still accounted for
                    raise
            tokens -= 1.0
            stats.emitted += 1
            yield item
    finally:
        await _aclose(upstream)


# -- deduplicate ---------------------------------------------------------------------------


def deduplicate(
    stream: AsyncIterable[T],
    key_fn: Callable[[T], Hashable],
    ttl: float,
    max_keys: int = 100_000,
    *,
    clock: Clock = time.monotonic,
    stats: OperatorStats | None = None,
) -> AsyncIterator[T]:
    """Drop items whose key (``key_fn(item)``) was let through less than ``ttl`` seconds ago.

    A key's ``ttl`` runs from when an item with that key was let through (by ``clock``);
    dropped duplicates do not extend it. At most ``max_keys`` keys are remembered: beyond
    that the oldest is forgotten first (counted in ``evicted``), so a duplicate of an
    evicted key would pass again. Applying it twice equals applying it once.
    """
    _check_callable("deduplicate", "key_fn", key_fn)
    if not (_is_number(ttl) and ttl > 0):
        raise ValueError(
            f"deduplicate: ttl {ttl!r} is invalid: expected seconds > 0 (float('inf') allowed)"
        )
    if not (isinstance(max_keys, int) and not isinstance(max_keys, bool) and max_keys >= 1):
        raise ValueError(f"deduplicate: max_keys {max_keys!r} is invalid: expected an int >= 1")
    _check_callable("deduplicate", "clock", clock)
    return _deduplicate(
        _upstream(stream, "deduplicate"),
        key_fn,
        float(ttl),
        max_keys,
        clock,
        _check_stats("deduplicate", stats),
    )


async def _deduplicate(
    upstream: AsyncIterator[T],
    key_fn: Callable[[T], Hashable],
    ttl: float,
    max_keys: int,
    clock: Clock,
    stats: OperatorStats,
) -> AsyncIterator[T]:
    stamps: dict[Hashable, float] = {}  # key -> when it was let through
    order: deque[Hashable] = deque()  # keys, oldest first (times are non-decreasing)
    next_expiry = _INF  # no key expires before this
    try:
        async for item in upstream:
            stats.seen += 1
            now = clock()
            if now >= next_expiry:
                while order and stamps[order[0]] + ttl <= now:
                    del stamps[order.popleft()]
                next_expiry = stamps[order[0]] + ttl if order else _INF
            key = key_fn(item)
            if key in stamps:
                stats.duplicates += 1
                continue
            stamps[key] = now
            order.append(key)
            if next_expiry == _INF:
                next_expiry = now + ttl
            if len(order) > max_keys:
                # next_expiry may now be early; the sweep above corrects it when reached.
                del stamps[order.popleft()]
                stats.evicted += 1
            stats.emitted += 1
            yield item
    finally:
        await _aclose(upstream)


# -- resample ------------------------------------------------------------------------------


def _check_idle(operator: str, idle_timeout: float | None) -> None:
    if idle_timeout is not None and not (_is_number(idle_timeout) and 0 < idle_timeout < _INF):
        raise ValueError(
            f"{operator}: idle_timeout {idle_timeout!r} is invalid: expected seconds > 0 or None"
        )


def resample_ohlc(
    stream: AsyncIterable[T],
    get_symbol: Callable[[T], str],
    get_price: Callable[[T], float | None],
    get_time: Callable[[T], datetime],
    window: timedelta | str,
    get_volume: Callable[[T], float | None] | None = None,
    allowed_lateness: timedelta | float = 0,
    idle_timeout: float | None = None,
    on_late: Callable[[T], Any] | None = None,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    stats: OperatorStats | None = None,
    source: str = "",
) -> AsyncIterator[Bar]:
    """Aggregate price events into OHLCV bars over tumbling, epoch-aligned event-time windows.

    ``window`` is a resolution label or ``timedelta`` (``1s 5s 10s 15s 30s 1m 5m 15m 30m 1h
    1d``). Each bar is ``Bar(symbol, ts=window start, open, high, low, close, volume,
    resolution=label, source=source)``; volume is the sum of ``get_volume`` (``None`` counts
    as 0; 0.0 without ``get_volume``). Windows close when the watermark (max event time seen
    minus ``allowed_lateness``) passes their end, when the upstream ends (all are flushed;
    not on an upstream error), or after ``idle_timeout`` seconds (by ``clock``) without an
    upstream item. Output is in window order, then symbol order. See ``mdp_core.windows``.
    With ``idle_timeout`` a pump task reads up to 128 items ahead, so that waiting for the
    upstream can be raced against a timer without losing an in-flight item (about 0.8 us
    more per event); choose it longer than the feed's normal gaps, since events arriving
    after an idle flush in the flushed windows are late.

    A late event (its window was already emitted) is counted and passed to ``on_late``.
    An event with an unusable price, volume, time or symbol is counted as ``invalid``,
    logged and skipped. For in-order input the bars equal pandas
    ``resample(window, label="left", closed="left")`` per symbol, empty windows removed.
    """
    name = "resample_ohlc"
    for arg, fn in (("get_symbol", get_symbol), ("get_price", get_price), ("get_time", get_time)):
        _check_callable(name, arg, fn)
    _check_callable(name, "get_volume", get_volume, optional=True)
    _check_callable(name, "on_late", on_late, optional=True)
    _check_idle(name, idle_timeout)
    windows = OhlcWindows(window, allowed_lateness, source=source)
    add = windows.add
    add_item: Callable[[T], Sequence[Bar] | None]
    if get_volume is None:

        def add_item(item: T) -> Sequence[Bar] | None:
            return add(get_symbol(item), get_time(item), get_price(item), 0.0)

    else:
        volume_of = get_volume

        def add_item(item: T) -> Sequence[Bar] | None:
            return add(get_symbol(item), get_time(item), get_price(item), volume_of(item))

    return _start_resample(
        name, stream, windows, add_item, on_late, stats, idle_timeout, clock, sleep
    )


def resample_bars(
    stream: AsyncIterable[Bar],
    window: timedelta | str,
    allowed_lateness: timedelta | float = 0,
    idle_timeout: float | None = None,
    on_late: Callable[[Bar], Any] | None = None,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    stats: OperatorStats | None = None,
    source: str | None = None,
) -> AsyncIterator[Bar]:
    """Roll finer bars up into ``window`` bars (``5s`` -> ``1m``, ``1m`` -> ``1h``, ...).

    First open and last close by bar time, max high, min low, summed volume; ``vwap``
    volume-weighted when every input has one, ``trade_count`` summed when every input has
    one (else ``None``). ``source`` defaults to the first input bar's. Input bars must be
    finer than the window and divide it, else ``ValueError`` when the first such bar
    arrives. Windows, watermark, lateness, ``idle_timeout``, ordering and counters are as
    for ``resample_ohlc``; a bar's event time is its ``ts`` (window start).
    """
    name = "resample_bars"
    _check_callable(name, "on_late", on_late, optional=True)
    _check_idle(name, idle_timeout)
    windows = BarWindows(window, allowed_lateness, source=source)
    return _start_resample(
        name, stream, windows, windows.add, on_late, stats, idle_timeout, clock, sleep
    )


def _start_resample(
    name: str,
    stream: AsyncIterable[T],
    windows: OhlcWindows | BarWindows,
    fold: Callable[[T], Sequence[Bar] | None],
    on_late: Callable[[T], Any] | None,
    stats: OperatorStats | None,
    idle_timeout: float | None,
    clock: Clock,
    sleep: Sleep,
) -> AsyncIterator[Bar]:
    _check_callable(name, "clock", clock)
    _check_callable(name, "sleep", sleep)
    counters = _check_stats(name, stats)
    source: AsyncIterator[Any] = _upstream(stream, name)
    if idle_timeout is not None:

        def has_open_windows() -> bool:
            return windows.open_windows > 0

        source = _with_idle_ticks(
            source, float(idle_timeout), has_open_windows, clock, sleep, counters
        )
    return _resample(name, source, windows, fold, on_late, counters)


async def _resample(
    name: str,
    source: AsyncIterator[Any],
    windows: OhlcWindows | BarWindows,
    fold: Callable[[Any], Sequence[Bar] | None],
    on_late: Callable[[Any], Any] | None,
    stats: OperatorStats,
) -> AsyncIterator[Bar]:
    """The resample loop: ``fold`` each item into ``windows``, yield the bars it closes;
    flush on ``_IDLE`` ticks and at the end of the stream (not on an error)."""
    flush = windows.flush
    try:
        async for item in source:
            if item is _IDLE:
                for bar in flush():
                    stats.emitted += 1
                    yield bar
                continue
            stats.seen += 1
            try:
                bars = fold(item)
            except InvalidEvent as exc:
                _invalid(name, stats, item, exc)
                continue
            if bars is None:
                stats.late += 1
                if on_late is not None:
                    on_late(item)
                continue
            stats.aggregated += 1
            if bars:
                for bar in bars:
                    stats.emitted += 1
                    yield bar
        for bar in flush():
            stats.emitted += 1
            yield bar
    finally:
        await _aclose(source)


class _Idle:
    def __repr__(self) -> str:
        return "<idle>"


_IDLE = _Idle()  # yielded by _with_idle_ticks after a silence
_READ_AHEAD = 128  # items _with_idle_ticks may take from its upstream ahead of its consumer


async def _with_idle_ticks(
    upstream: AsyncIterator[T],
    idle_timeout: float,
    wants_tick: Callable[[], bool],
    clock: Clock,
    sleep: Sleep,
    stats: OperatorStats,
) -> AsyncIterator[T | _Idle]:
    """Yield ``upstream``'s items, and ``_IDLE`` when ``wants_tick()`` and no item has come
    for ``idle_timeout`` seconds (by ``clock``; waits use ``sleep``).

    A pump task moves items from the upstream into a small ``Channel`` (at most
    ``_READ_AHEAD`` ahead), so waiting for the next item can be raced against a timer
    without ever cancelling the upstream mid-item: a timeout loses nothing. A task and a
    timer are only needed when the buffer is empty; one timer serves until it fires.
    Items read ahead but abandoned by a consumer that stops early are counted in
    ``stats.dropped``. Closes the upstream.
    """
    buffer: Channel[T] = Channel(_READ_AHEAD)
    pump = asyncio.ensure_future(_pump(upstream, buffer, stats))
    getter: asyncio.Future[T] | None = None  # a buffer.get() in flight
    timer: asyncio.Future[Any] | None = None
    last = clock()
    try:
        while True:
            if getter is None:
                try:
                    item = buffer.get_nowait()
                except asyncio.QueueEmpty:
                    getter = asyncio.ensure_future(buffer.get())
                except ChannelClosed:
                    return  # the upstream ended and everything was delivered
                else:
                    last = clock()
                    yield item
                    continue
            if wants_tick() and not getter.done():
                remaining = last + idle_timeout - clock()
                if remaining <= 0:
                    last = clock()
                    yield _IDLE
                    continue
                if timer is None or timer.done():
                    timer = asyncio.ensure_future(sleep(remaining))
                await asyncio.wait((getter, timer), return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    continue  # the timer fired: check the clock again
            elif not getter.done():
                await asyncio.wait((getter,))
            done, getter = getter, None
            try:
                item = done.result()
            except ChannelClosed:
                return
            last = clock()
            yield item
    finally:
        for task in (timer, getter, pump):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait((task,))
        if getter is not None and not getter.cancelled() and getter.exception() is None:
            stats.dropped += 1  # an item taken but never delivered
        stats.dropped += len(buffer)
        if not pump.cancelled():
            pump.exception()  # retrieved (the pump hands errors over through the buffer)
        await _aclose(upstream)


async def _pump(upstream: AsyncIterator[T], buffer: Channel[T], stats: OperatorStats) -> None:
    """Move items from ``upstream`` into ``buffer``; close it at the end, or with the error.

    An item taken from the upstream but never buffered (the pump was cancelled, or the
    buffer closed, while it waited for room) is counted in ``stats.dropped``."""
    try:
        async for item in upstream:
            try:
                await buffer.put(item)
            except (asyncio.CancelledError, ChannelClosed):
                stats.dropped += 1
                raise
    except Exception as exc:
        buffer.close(exc)
    except BaseException:
        buffer.close()
        raise
    else:
        buffer.close()


def _invalid(name: str, stats: OperatorStats, item: object, exc: InvalidEvent) -> None:
    stats.invalid += 1
    if stats.invalid == 1 or stats.invalid % 1000 == 0:
        logger.warning("{}: skipped invalid event #{} {!r}: {}", name, stats.invalid, item, exc)
