"""Per-event cost of the stream operators, measured in one run.

    python -m benchmarks.bench_operators            # ~1M events, 5 repetitions
    python -m benchmarks.bench_operators --quick    # 100k events, 3 repetitions

Stages, each fed the same prebuilt ``Quote`` objects (50 symbols, increasing event time, so
model construction is not measured):

1. ``bare``: an async generator yielding the events, consumed by ``async for``;
2. ``channel``: a producer task ``put``s them into a ``Channel``, the consumer iterates it;
3. ``chain``: Channel -> throttle(unlimited) -> deduplicate -> resample_ohlc(1m);
4. ``chain_edge``: the same chain, fed through the stream's ``Edge`` (every event counted
   as received where a provider hands it over, as every stream does): the cost of the
   accounting, as a ratio to ``chain`` (target <= 1.05);
5. ``chain_idle``: the chain with ``idle_timeout`` set (the upstream is raced against a
   timer, which costs a task per event).

Each figure is the median over repetitions (stages interleaved so machine noise hits them
alike), in microseconds per event and as a ratio to ``bare``. Prints a table and writes
``benchmarks/results/operators.json``.
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
TARGET_EDGE_RATIO = 1.05  # counting at the edge costs at most 5% of the chain
SYMBOLS = 50
CAPACITY = 4096


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
    "chain": ("Channel -> throttle(inf) -> deduplicate -> resample_ohlc(1m)", run_chain),
    "chain_edge": ("the chain fed through the stream's Edge (counted as received)", run_chain_edge),
    "chain_idle": ("chain with resample_ohlc(idle_timeout=5)", run_chain_idle),
}


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
            if rep % 2:  # chain and chain_edge take turns going first (a fair pair)
                i, j = order.index("chain"), order.index("chain_edge")
                order[i], order[j] = order[j], order[i]
            for name in order:
                runs[name].append(_time_stage(STAGES[name][1], events))
    finally:
        gc.unfreeze()
    medians = {name: median(values) for name, values in runs.items()}
    bare = medians["bare"]
    # the edge's cost, from the paired runs (chain and chain_edge ran back to back)
    edge_ratio = median([e / c for e, c in zip(runs["chain_edge"], runs["chain"], strict=True)])
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
        "edge_ratio_to_chain": round(edge_ratio, 3),
        "target_edge_ratio": TARGET_EDGE_RATIO,
        "edge_meets_target": edge_ratio <= TARGET_EDGE_RATIO,
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
    return (
        f"{result['events']:,} prebuilt quotes, {result['symbols']} symbols; median of "
        f"{result['repetitions']} runs, stages interleaved. Reference: `bare` (an async "
        "generator consumed by `async for`). Counting at the edge: chain_edge / chain = "
        f"{result.get('edge_ratio_to_chain', float('nan')):.3f} (median of the paired runs; "
        f"target <= {TARGET_EDGE_RATIO})"
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
    print(f"wrote {write_json('operators', result)}")


if __name__ == "__main__":
    main()
