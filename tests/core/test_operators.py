"""throttle and deduplicate on virtual time; upstream closing and argument errors for every
operator. (The resamplers' aggregation is in test_operators_resample.py.)"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdp_core.models import Bar, Quote
from mdp_core.operators import (
    OperatorStats,
    deduplicate,
    resample_bars,
    resample_ohlc,
    throttle,
)
from tests.core.operator_helpers import T0, FakeClock, Upstream, collect, run

# -- throttle ------------------------------------------------------------------------------


async def _timed(stream: AsyncIterator[Any], clock: FakeClock) -> list[tuple[float, Any]]:
    """(virtual time of delivery, item) for each item of ``stream``."""
    return [(clock.now, item) async for item in stream]


async def test_throttle_under_the_rate_never_waits() -> None:
    clock = FakeClock(now=0.0)
    times = [0.1 * i for i in range(1, 51)]  # exactly 10/s
    stats = OperatorStats()
    up = Upstream(range(50), clock=clock, times=times)
    out = await _timed(
        throttle(up, rate_limit=10, burst=1, clock=clock, sleep=clock.sleep, stats=stats), clock
    )
    assert [item for _, item in out] == list(range(50))
    assert [t for t, _ in out] == times  # delivered the moment they arrived
    assert clock.sleeps == []
    assert (stats.seen, stats.emitted, stats.delayed, stats.dropped) == (50, 50, 0, 0)


async def test_throttle_burst_passes_at_once_then_delays_each_item_exactly() -> None:
    clock = FakeClock(now=0.0)
    stats = OperatorStats()
    up = Upstream(range(5), clock=clock, times=[0.0] * 5)
    out = await _timed(
        throttle(up, rate_limit=10, burst=2, clock=clock, sleep=clock.sleep, stats=stats), clock
    )
    assert [item for _, item in out] == [0, 1, 2, 3, 4]
    assert [round(t, 9) for t, _ in out] == [0.0, 0.0, 0.1, 0.2, 0.3]
    assert (stats.seen, stats.emitted, stats.delayed, stats.dropped) == (5, 5, 3, 0)


async def test_throttle_drop_mode_drops_and_counts_exactly() -> None:
    clock = FakeClock(now=0.0)
    stats = OperatorStats()
    times = [0.0] * 5 + [0.1, 0.1, 0.35]
    up = Upstream(range(8), clock=clock, times=times)
    out = await collect(
        throttle(up, 10, burst=2, mode="drop", clock=clock, sleep=clock.sleep, stats=stats)
    )
    # t=0: 0,1 pass, 2-4 dropped; t=0.1: one token back -> 5 passes, 6 dropped;
    # t=0.35: 2.5 tokens capped at burst 2 -> 7 passes.
    assert out == [0, 1, 5, 7]
    assert clock.sleeps == []
    assert (stats.seen, stats.emitted, stats.dropped, stats.delayed) == (8, 4, 4, 0)


async def test_throttle_default_burst_is_one_second_of_items() -> None:
    clock = FakeClock(now=0.0)
    stats = OperatorStats()
    up = Upstream(range(30), clock=clock, times=[0.0] * 30)
    out = await collect(throttle(up, 10, mode="drop", clock=clock, stats=stats))
    assert out == list(range(10))
    stats2 = OperatorStats()
    up = Upstream(range(3), clock=clock, times=[0.0] * 3)
    assert await collect(throttle(up, 0.5, mode="drop", clock=clock, stats=stats2)) == [0]


@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0, 250.0]),
    burst=st.one_of(st.none(), st.integers(1, 5)),
    mode=st.sampled_from(["delay", "drop"]),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.1, 0.5, 2.0]), max_size=60),
)
def test_throttle_never_exceeds_its_rate_in_virtual_time(
    rate: float, burst: int | None, mode: str, gaps: list[float]
) -> None:
    clock = FakeClock(now=0.0)
    stats = OperatorStats()
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        times.append(now)

    async def main() -> list[tuple[float, Any]]:
        up = Upstream(range(len(times)), clock=clock, times=times)
        stream = throttle(
            up,
            rate,
            burst,
            mode,  # type: ignore[arg-type]
            clock=clock,
            sleep=clock.sleep,
            stats=stats,
        )
        out = []
        async for item in stream:
            out.append((clock.now, item))
        return out

    out = asyncio.run(main())
    size = burst if burst is not None else max(1, int(rate))
    emitted = [t for t, _ in out]
    for i in range(len(emitted)):
        for j in range(i, len(emitted)):
            assert j - i + 1 <= size + rate * (emitted[j] - emitted[i]) + 1e-6
    assert stats.seen == stats.emitted + stats.dropped == len(times)
    if mode == "delay":
        assert [item for _, item in out] == list(range(len(times)))
    if all(g >= 1.0 / rate for g in gaps):
        assert clock.sleeps == [] and stats.dropped == 0 and stats.delayed == 0


async def test_throttle_unlimited_is_the_upstream_itself() -> None:
    up = Upstream([1, 2, 3])
    assert throttle(up, None) is up
    assert throttle(up, math.inf) is up
    stats = OperatorStats()
    assert await collect(throttle(Upstream([1, 2, 3]), None, stats=stats)) == [1, 2, 3]
    assert (stats.seen, stats.emitted) == (3, 3)


async def test_throttle_counts_an_item_abandoned_while_waiting_as_dropped() -> None:
    clock = FakeClock(now=0.0)
    stats = OperatorStats()
    waiting = asyncio.Event()

    async def hang(_: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    up = Upstream([1, 2], clock=clock, times=[0.0, 0.0])
    stream = throttle(up, 1, burst=1, clock=clock, sleep=hang, stats=stats)
    assert await anext(stream) == 1
    task = asyncio.ensure_future(anext(stream))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert up.closed
    assert (stats.seen, stats.emitted, stats.dropped, stats.delayed) == (2, 1, 1, 1)


# -- deduplicate ---------------------------------------------------------------------------


async def test_deduplicate_counts_duplicates_exactly() -> None:
    stats = OperatorStats()
    clock = FakeClock()
    out = await collect(
        deduplicate(Upstream("abacbaad"), key_fn=str.upper, ttl=10, clock=clock, stats=stats)
    )
    assert out == ["a", "b", "c", "d"]
    assert (stats.seen, stats.emitted, stats.duplicates, stats.evicted) == (8, 4, 4, 0)


async def test_deduplicate_ttl_runs_from_when_the_key_was_let_through() -> None:
    clock = FakeClock(now=0.0)
    times = [0.0, 5.0, 9.999, 10.0, 15.0, 19.9, 20.0, 100.0]
    up = Upstream(range(len(times)), clock=clock, times=times)
    stats = OperatorStats()
    out = await collect(deduplicate(up, key_fn=lambda _: "k", ttl=10, clock=clock, stats=stats))
    # passes at 0, 10 (10 - 0 >= ttl), 20, 100; duplicates do not extend the ttl
    assert out == [0, 3, 6, 7]
    assert stats.duplicates == 4


async def test_deduplicate_max_keys_evicts_oldest_first() -> None:
    stats = OperatorStats()
    keys = [1, 2, 3, 4, 5, 1, 5, 4, 2]
    out = await collect(
        deduplicate(Upstream(keys), lambda k: k, ttl=60, max_keys=3, clock=FakeClock(), stats=stats)
    )
    # 4 evicts 1, 5 evicts 2; 1 passes again (evicts 3); 5 and 4 are remembered; 2 passes.
    assert out == [1, 2, 3, 4, 5, 1, 2]
    assert (stats.duplicates, stats.evicted) == (2, 4)
    assert stats.seen == stats.emitted + stats.duplicates


def _reference_dedupe(events: list[tuple[float, int, int]], ttl: float) -> list[Any]:
    passed: dict[int, float] = {}
    out = []
    for t, key, i in events:
        if key in passed and t < passed[key] + ttl:
            continue
        passed[key] = t
        out.append((t, key, i))
    return out


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.integers(0, 6), max_size=80),
    gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0]), min_size=80, max_size=80),
    ttl=st.sampled_from([0.5, 1.0, 5.0, 1e9]),
    max_keys=st.sampled_from([1, 2, 3, 100_000]),
)
def test_deduplicate_is_idempotent_and_matches_a_reference(
    keys: list[int], gaps: list[float], ttl: float, max_keys: int
) -> None:
    times = [sum(gaps[: i + 1]) for i in range(len(keys))]
    events = [(t, k, i) for i, (t, k) in enumerate(zip(times, keys, strict=False))]
    once_stats, twice_stats = OperatorStats(), OperatorStats()

    def key(e: tuple[float, int, int]) -> int:
        return e[1]

    def once() -> AsyncIterator[tuple[float, int, int]]:
        clock = FakeClock(now=0.0)
        return deduplicate(
            Upstream(events, clock=clock, times=times),
            key,
            ttl,
            max_keys,
            clock=clock,
            stats=once_stats,
        )

    def twice() -> AsyncIterator[tuple[float, int, int]]:
        clock = FakeClock(now=0.0)  # both layers read the upstream's virtual time
        inner = deduplicate(
            Upstream(events, clock=clock, times=times), key, ttl, max_keys, clock=clock
        )
        return deduplicate(inner, key, ttl, max_keys, clock=clock, stats=twice_stats)

    out_once = run(once)
    assert run(twice) == out_once
    assert once_stats.seen == once_stats.emitted + once_stats.duplicates == len(events)
    assert twice_stats.duplicates == 0
    if max_keys >= len(set(keys)):
        assert out_once == _reference_dedupe(events, ttl)
        assert once_stats.evicted == 0
    # Whatever the evictions, every dropped item really was a duplicate within the ttl.
    passed = set(out_once)
    for t, k, i in events:
        if (t, k, i) not in passed:
            assert any(pk == k and pt <= t < pt + ttl and pi < i for pt, pk, pi in passed)


# -- every operator closes its upstream ----------------------------------------------------

_QUOTES = [Quote("AAA", T0 + timedelta(seconds=i), last=10.0 + i) for i in range(5)]
_BARS = [
    Bar("AAA", T0 + timedelta(seconds=30 * i), 1.0, 2.0, 1.0, 2.0, 1.0, "5s") for i in range(5)
]

OPERATORS: dict[str, tuple[list[Any], Callable[[Any], AsyncIterator[Any]]]] = {
    "throttle": (_QUOTES, lambda up: throttle(up, 1000, mode="drop")),
    "throttle-unlimited": (_QUOTES, lambda up: throttle(up, None, stats=OperatorStats())),
    "deduplicate": (_QUOTES, lambda up: deduplicate(up, lambda q: q.key, ttl=60)),
    "resample_ohlc": (
        _QUOTES,
        lambda up: resample_ohlc(up, lambda q: q.symbol, lambda q: q.last, lambda q: q.ts, "1s"),
    ),
    "resample_ohlc-idle": (
        _QUOTES,
        lambda up: resample_ohlc(
            up, lambda q: q.symbol, lambda q: q.last, lambda q: q.ts, "1s", idle_timeout=60
        ),
    ),
    "resample_bars": (_BARS, lambda up: resample_bars(up, "1m")),
    "resample_bars-idle": (_BARS, lambda up: resample_bars(up, "1m", idle_timeout=60)),
}


@pytest.mark.parametrize("name", list(OPERATORS))
async def test_upstream_closed_when_the_consumer_stops_early(name: str) -> None:
    items, make = OPERATORS[name]
    up = Upstream(items, block=True)
    async with asyncio.timeout(10):
        async with aclosing(make(up)) as stream:  # type: ignore[type-var]
            async for _ in stream:
                break
    assert up.closed


@pytest.mark.parametrize("name", list(OPERATORS))
async def test_upstream_closed_when_the_consumer_is_cancelled(name: str) -> None:
    items, make = OPERATORS[name]
    up = Upstream(items, block=True)
    received: list[Any] = []

    async def consume() -> None:
        async for item in make(up):
            received.append(item)

    async with asyncio.timeout(10):
        task = asyncio.create_task(consume())
        await up.blocked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert up.closed


@pytest.mark.parametrize("name", list(OPERATORS))
async def test_upstream_error_propagates_and_upstream_is_closed(name: str) -> None:
    items, make = OPERATORS[name]
    up = Upstream(items, error=RuntimeError("feed lost"))
    with pytest.raises(RuntimeError, match="feed lost"):
        await collect(make(up))
    assert up.closed


async def test_upstream_closed_when_the_operator_itself_fails() -> None:
    up = Upstream(_QUOTES, block=True)

    def bad_key(q: Quote) -> Any:
        raise KeyError(q.symbol)

    with pytest.raises(KeyError):
        await collect(deduplicate(up, bad_key, ttl=1))
    assert up.closed


# -- argument errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"rate_limit": 0}, ["rate_limit 0", "> 0"]),
        ({"rate_limit": -5.0}, ["rate_limit -5.0"]),
        ({"rate_limit": math.nan}, ["rate_limit nan"]),
        ({"rate_limit": "10"}, ["rate_limit '10'"]),
        ({"rate_limit": True}, ["rate_limit True"]),
        ({"rate_limit": 10, "burst": 0}, ["burst 0", "int >= 1"]),
        ({"rate_limit": 10, "burst": 2.5}, ["burst 2.5"]),
        ({"rate_limit": 10, "mode": "queue"}, ["mode 'queue'", "'delay' or 'drop'"]),
    ],
)
def test_throttle_rejects_bad_arguments(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        throttle(Upstream([]), **kwargs)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"ttl": 0}, ["ttl 0", "> 0"]),
        ({"ttl": -1}, ["ttl -1"]),
        ({"ttl": math.nan}, ["ttl nan"]),
        ({"ttl": 1, "max_keys": 0}, ["max_keys 0", "int >= 1"]),
        ({"ttl": 1, "max_keys": 10.0}, ["max_keys 10.0"]),
    ],
)
def test_deduplicate_rejects_bad_arguments(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        deduplicate(Upstream([]), key_fn=lambda x: x, **kwargs)
    for word in words:
        assert word in str(err.value)


def test_operators_reject_non_callables_and_non_streams() -> None:
    with pytest.raises(TypeError, match="key_fn 'symbol' is not callable"):
        deduplicate(Upstream([]), key_fn="symbol", ttl=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"stream \[1, 2\] is a list: expected an async iterable"):
        throttle([1, 2], 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"get_price 1\.0 is not callable"):
        resample_ohlc(Upstream([]), lambda q: q, 1.0, lambda q: q, "1m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stats"):
        deduplicate(Upstream([]), lambda x: x, ttl=1, stats={})  # type: ignore[arg-type]
