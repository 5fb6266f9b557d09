"""Per-event cost of the stream operators, measured in one run.

    python -m benchmarks.bench_operators            # 1M events, 7 repetitions
    python -m benchmarks.bench_operators --quick    # 100k events, 3 repetitions

Stages, each fed the same prebuilt ``Quote`` objects (50 symbols, increasing event time, so
model construction is not measured):

1. ``bare``: an async generator yielding the events, consumed by ``async for``;
2. ``channel``: a producer task ``put``s them into a ``Channel``, the consumer iterates it;
3. ``channel_edge``: the same, the producer putting through the stream's ``Edge`` (every
   event counted as received where a provider hands it over, as every stream does);
4. ``chain``: Channel -> throttle(unlimited) -> deduplicate -> resample_ohlc(1m);
5. ``chain_edge``: the same chain, fed through the ``Edge``;
6. ``chain_idle``: the chain with ``idle_timeout`` set (the upstream is raced against a
   timer, which costs a task per event).

Each figure is the median over repetitions (stages interleaved so machine noise hits them
alike), in microseconds per event and as a ratio to ``bare``.

The cost of counting at the edge (target: at most 5% of the chain) is measured where it is
the only difference: ``channel_edge - channel``, the median over many short pairs (100,000
events each, back to back, taking turns going first), as a share of ``chain``. The end-to-end pair
``chain_edge / chain`` is reported beside it with its spread: the chain's own run-to-run
noise (several percent on a shared VM) is larger than the edge's cost, so that ratio alone
cannot resolve a 5% effect.

Prints a table and writes ``benchmarks/results/operators.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import machine, markdown_table, median, now_iso, write_json
from mdp_core.channel import Channel
from mdp_core.edge import Edge
from mdp_core.models import Quote
from mdp_core.operators import deduplicate, resample_ohlc, throttle

TARGET_US = 3.0
TARGET_EDGE_SHARE = 0.05  # counting at the edge costs at most 5% of the chain
SYMBOLS = 50
CAPACITY = 4096
EDGE_PAIR_EVENTS = 100_000  # events per run in the paired edge measurement


def build_events(n: int) -> list[Quote]:
    """``n`` quotes over ``SYMBOLS`` symbols, one per millisecond of event time."""
    base = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    symbols = [f"SYM{i:02d}" for i in range(SYMBOLS)]
    prices = [100.0 + (i % 97) * 0.01 for i in range(1000)]
    sizes = [float(1 + i % 9) for i in range(10)]
    step = timedelta(milliseconds=1)
    return [
        Quote(
            symbols[i % SYMBOLS],
            base + i * step,
            bid=prices[i % 1000],
            ask=prices[(i + 3) % 1000],
            last=prices[(i + 1) % 1000],
            last_size=sizes[i % 10],
        )
        for i in range(n)
    ]


async def _source(events: list[Quote]) -> AsyncIterator[Quote]:
    for event in events:
        yield event


async def run_bare(events: list[Quote]) -> int:
    n = 0
    async for _ in _source(events):
        n += 1
    return n


async def _produce(channel: Channel[Quote], events: list[Quote]) -> None:
    put = channel.put
    for event in events:
        await put(event)
    channel.close()


async def _produce_at_edge(edge: Edge[Quote], events: list[Quote]) -> None:
    put = edge.put
    for event in events:
        await put(event)
    edge.close()


async def run_channel(events: list[Quote]) -> int:
    channel: Channel[Quote] = Channel(CAPACITY)
    producer = asyncio.create_task(_produce(channel, events))
    n = 0
    async for _ in channel.iter():
        n += 1
    await producer
    return n


def _chain(channel: Channel[Quote], idle_timeout: float | None) -> AsyncIterator[Any]:
    stream = throttle(channel.iter(), rate_limit=None)
    stream = deduplicate(stream, key_fn=lambda q: (q.symbol, q.ts), ttl=60.0)
    return resample_ohlc(
        stream,
        get_symbol=lambda q: q.symbol,
        get_price=lambda q: q.last,
        get_time=lambda q: q.ts,
        window=timedelta(minutes=1),
        get_volume=lambda q: q.last_size,
        idle_timeout=idle_timeout,
    )


async def _run_chain(events: list[Quote], idle_timeout: float | None, edge: bool = False) -> int:
    channel: Channel[Quote] = Channel(CAPACITY)
    if edge:
        producer = asyncio.create_task(_produce_at_edge(Edge(channel), events))
    else:
        producer = asyncio.create_task(_produce(channel, events))
    bars = 0
    async for _ in _chain(channel, idle_timeout):
        bars += 1
    await producer
    expected = SYMBOLS * (1 + (len(events) - 1) // 60_000)  # one bar per symbol per minute
    if bars != expected:
        raise AssertionError(f"chain produced {bars} bars, expected {expected}")
    return bars


async def run_channel_edge(events: list[Quote]) -> int:
    channel: Channel[Quote] = Channel(CAPACITY)
    producer = asyncio.create_task(_produce_at_edge(Edge(channel), events))
    n = 0
    async for _ in channel.iter():
        n += 1
    await producer
    return n


async def run_chain(events: list[Quote]) -> int:
    return await _run_chain(events, None)


async def run_chain_edge(events: list[Quote]) -> int:
    return await _run_chain(events, None, edge=True)


async def run_chain_idle(events: list[Quote]) -> int:
    return await _run_chain(events, 5.0)


Stage = Callable[[list[Quote]], Coroutine[Any, Any, int]]
STAGES: dict[str, tuple[str, Stage]] = {
    "bare": ("async generator -> async for", run_bare),
    "channel": ("Channel: producer put -> consumer iter", run_channel),
    "channel_edge": ("the Channel fed through the stream's Edge (counted)", run_channel_edge),
    "chain": ("Channel -> throttle(inf) -> deduplicate -> resample_ohlc(1m)", run_chain),
    "chain_edge": ("the chain fed through the stream's Edge (counted as received)", run_chain_edge),
    "chain_idle": ("chain with resample_ohlc(idle_timeout=5)", run_chain_idle),
}
PAIRS = (("channel", "channel_edge"), ("chain", "chain_edge"))  # run back to back


def _time_stage(stage: Stage, events: list[Quote]) -> float:
    """Microseconds per event for one run of ``stage`` on a fresh event loop."""
    gc.collect()
    loop = asyncio.new_event_loop()
    try:
        start = time.perf_counter()
        loop.run_until_complete(stage(events))
        elapsed = time.perf_counter() - start
    finally:
        loop.close()
    return elapsed / len(events) * 1e6


def _edge_cost(events: list[Quote], pairs: int) -> list[float]:
    """``pairs`` short back-to-back runs of ``channel_edge`` and ``channel`` (taking turns
    going first): the difference of each pair in microseconds per event. Short pairs keep
    the slow drift of a shared machine out of each difference."""
    differences = []
    for i in range(pairs):
        first, second = (
            (run_channel, run_channel_edge) if i % 2 else (run_channel_edge, run_channel)
        )
        a, b = _time_stage(first, events), _time_stage(second, events)
        differences.append(b - a if first is run_channel else a - b)
    return differences


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every stage; return the figures (see the module docstring)."""
    n = 100_000 if quick else 1_000_000
    repetitions = 3 if quick else 7
    host = machine()  # the load average at the start
    events = build_events(n)
    gc.freeze()  # the prebuilt events are not part of what a real pipeline's GC scans
    try:
        runs: dict[str, list[float]] = {name: [] for name in STAGES}
        for rep in range(repetitions):
            order = list(STAGES)
            if rep % 2:  # each pair takes turns going first (a fair pair)
                for a, b in PAIRS:
                    i, j = order.index(a), order.index(b)
                    order[i], order[j] = order[j], order[i]
            for name in order:
                runs[name].append(_time_stage(STAGES[name][1], events))
        edge_differences = _edge_cost(events[:EDGE_PAIR_EVENTS], 15 if quick else 61)
    finally:
        gc.unfreeze()
    medians = {name: median(values) for name, values in runs.items()}
    bare = medians["bare"]
    edge_us = median(edge_differences)
    edge_share = edge_us / medians["chain"]
    ratios = [e / c for e, c in zip(runs["chain_edge"], runs["chain"], strict=True)]
    return {
        "benchmark": "operators",
        "when": now_iso(),
        "machine": host,
        "events": n,
        "symbols": SYMBOLS,
        "channel_capacity": CAPACITY,
        "repetitions": repetitions,
        "target_chain_us_per_event": TARGET_US,
        "meets_target": medians["chain"] < TARGET_US,
        "edge_us_per_event": round(edge_us, 4),
        "edge_pairs": len(edge_differences),
        "edge_pair_events": EDGE_PAIR_EVENTS,
        "edge_share_of_chain": round(edge_share, 4),
        "target_edge_share": TARGET_EDGE_SHARE,
        "edge_meets_target": edge_share <= TARGET_EDGE_SHARE,
        "chain_edge_to_chain": {
            "median": round(median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        },
        "stages": {
            name: {
                "description": description,
                "us_per_event": round(medians[name], 4),
                "ratio_to_bare": round(medians[name] / bare, 2),
                "events_per_second": round(1e6 / medians[name]),
                "runs_us_per_event": [round(v, 4) for v in runs[name]],
            }
            for name, (description, _) in STAGES.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        (
            name,
            s["description"],
            f"{s['us_per_event']:.3f}",
            f"{s['ratio_to_bare']:.2f}",
            f"{s['events_per_second']:,}",
        )
        for name, s in result["stages"].items()
    ]
    return markdown_table(("stage", "what", "us/event", "x bare", "events/s"), rows)


def describe(result: dict[str, Any]) -> str:
    ratio = result["chain_edge_to_chain"]
    return (
        f"{result['events']:,} prebuilt quotes, {result['symbols']} symbols; median of "
        f"{result['repetitions']} runs, stages interleaved. Reference: `bare` (an async "
        "generator consumed by `async for`). Counting at the edge: channel_edge - channel = "
        f"{result['edge_us_per_event']:.3f} us/event = {result['edge_share_of_chain']:.1%} of "
        f"the chain (median of {result['edge_pairs']} paired runs; target <= "
        f"{TARGET_EDGE_SHARE:.0%}); end to "
        f"end, chain_edge / chain = {ratio['median']:.3f} (paired runs from {ratio['min']:.3f} "
        f"to {ratio['max']:.3f}: the chain's own noise)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k events, 3 repetitions")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(table(result))
    print(describe(result))
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"chain {verdict} the target of {TARGET_US} us/event")
    verdict = "meets" if result["edge_meets_target"] else "MISSES"
    print(f"counting at the edge {verdict} the target of {TARGET_EDGE_SHARE:.0%} of the chain")
    print(f"wrote {write_json('operators', result)}")


if __name__ == "__main__":
    main()
