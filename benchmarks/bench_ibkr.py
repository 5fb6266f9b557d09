"""IBKR ingest throughput: quotes/s from the simulated IB Gateway through the real ib_async
client and ``IBKRStreamSource`` into a ``Channel``.

    python -m benchmarks.bench_ibkr            # 10 s windows, every scenario
    python -m benchmarks.bench_ibkr --quick    # 4 s windows, fewer scenarios

The gateway runs in its own process (``mdp gateway``), so the client has a core to itself
(as far as the machine allows: the load average is recorded). The client side is the
production path: ``RuntimeOrchestrator.quotes_to_channel(provider="ibkr")``, i.e. ib_async
decoding the TWS messages, the source's synchronous ticker callback building one ``Quote``
per ticker update into its internal channel, and the runtime pumping those into the
consumer's channel, which a consumer drains in batches.

What counts as a quote: one ``Quote`` per ticker update. ib_async applies every tick of a
TCP read and then emits each touched ticker once, so a quote is a symbol's state after one
read. The gateway sends a trade as a burst of 8 messages (bid, ask, last, 3 sizes, volume,
time) and writes all of a pump's bursts in one go, symbol by symbol; so quotes/s is bounded
by symbols x pumps/s, and messages/s by what ib_async can decode. Both are reported, and
``msgs/quote`` (8 = one trade per quote; more = several trades of a symbol in one read).

Scenarios:
- ``50 symbols``: one connection, gateway tuned for many small pumps (the headline);
- ``50 symbols, read_chunk=None``: the same without the source's read chunking, when the
  client falls behind (large reads make ib_async's buffer handling quadratic);
- ``500 symbols, 5 connections, 1 process``: 5 sources x 100 symbols (IB's 100 lines per
  connection) in one event loop;
- ``500 symbols, 5 connections, 5 processes``: one source per process (full mode only);
- ``client path only``: what the client side can absorb when every read carries exactly one
  trade (8 messages) per symbol: real TWS messages, built with the gateway's own encoder,
  fed straight into ib_async's socket handler of a connected source (gateway data paused),
  so neither the gateway's rate nor its packing limits it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.common import machine, markdown_table, now_iso, quiet_logging, write_json
from mdp_core.gateway import SimTick, SimulatedGateway
from mdp_core.gateway.protocol import tick_frames
from mdp_core.providers.ibkr import IBKRStreamSource
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.runtime import RuntimeOrchestrator
from mdp_core.settings import IBKRSettings

TARGET_QUOTES_PER_S = 20_000
_LISTENING = re.compile(r"simulated IB Gateway on ([\d.]+):(\d+)")


@dataclass(frozen=True)
class GatewayConfig:
    symbols: int
    time_compression: float
    tick_interval: float
    trades_per_bar: str = "1,8"

    def label(self) -> str:
        return f"x{self.time_compression:g}, pump {self.tick_interval * 1000:g} ms"


def symbols(n: int) -> list[str]:
    return [f"S{i:03d}" for i in range(n)]


@contextlib.contextmanager
def gateway_process(config: GatewayConfig) -> Iterator[int]:
    """``mdp gateway`` in a subprocess on a free port; yields the port."""
    command = [
        sys.executable, "-m", "mdp_core.cli", "gateway", "--port", "0",
        "--symbols", ",".join(symbols(config.symbols)),
        "--time-compression", str(config.time_compression),
        "--tick-interval", str(config.tick_interval),
        "--trades-per-bar", config.trades_per_bar, "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            match = _LISTENING.search(line)
            if match:
                port = int(match.group(2))
                break
        if port is None:
            raise RuntimeError(f"the gateway did not start: {proc.wait()}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def measure_streams(
    port: int,
    streams: list[tuple[int, list[str]]],
    seconds: float,
    warmup: float,
    read_chunk: int | None = 8192,
) -> dict[str, Any]:
    """Quotes/s over ``seconds`` (after ``warmup``) of one source per (client id, symbols)."""
    sources: list[IBKRStreamSource] = []

    def build(**kwargs: Any) -> IBKRStreamSource:
        source = IBKRStreamSource(**kwargs)
        sources.append(source)
        return source

    registry = ProviderRegistry(entry_points=False)
    registry.register("ibkr", build, replace=True)
    counts = [0] * len(streams)

    async def consume(i: int, channel: Any) -> None:
        while True:
            batch = await channel.get_batch(8192)
            counts[i] += len(batch)

    async with RuntimeOrchestrator(registry=registry) as rt:
        consumers = []
        for i, (client_id, names) in enumerate(streams):
            channel = await rt.quotes_to_channel(
                names, max_buffer=65_536, provider="ibkr",
                ibkr_settings=IBKRSettings(port=port, client_id=client_id),
                market_open=lambda now: True, read_chunk=read_chunk,
            )  # fmt: skip
            consumers.append(asyncio.create_task(consume(i, channel)))
        await asyncio.sleep(warmup)
        quotes0, cpu0, wall0 = sum(counts), time.process_time(), time.perf_counter()
        msgs0 = sum(s.stats()["messages_received"] for s in sources)
        await asyncio.sleep(seconds)
        wall = time.perf_counter() - wall0
        quotes = sum(counts) - quotes0
        msgs = sum(s.stats()["messages_received"] for s in sources) - msgs0
        cpu = (time.process_time() - cpu0) / wall
        stats = [s.stats() for s in sources]
        for task in consumers:
            task.cancel()
    return {
        "quotes_per_s": quotes / wall,
        "messages_per_s": msgs / wall,
        "client_cpu": cpu,
        "connections": len(streams),
        "symbols": sum(len(names) for _, names in streams),
        "rejected": sum(s["rejected"] for s in stats),
        "reconnects": sum(s["reconnects"] for s in stats),
        "seconds": wall,
    }


def _streams(
    n_symbols: int, per_connection: int, first_client_id: int
) -> list[tuple[int, list[str]]]:
    names = symbols(n_symbols)
    return [
        (first_client_id + i, names[j : j + per_connection])
        for i, j in enumerate(range(0, n_symbols, per_connection))
    ]


def _worker(
    port: int, client_id: int, first: int, count: int, seconds: float, warmup: float
) -> None:
    """One client process of the multi-process scenario: prints its figures as JSON."""
    quiet_logging()
    names = symbols(first + count)[first:]
    result = asyncio.run(measure_streams(port, [(client_id, names)], seconds, warmup))
    print(json.dumps(result), flush=True)


def measure_processes(
    port: int, n_symbols: int, per_process: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """One client process (one source, its own client id) per ``per_process`` symbols."""
    procs = []
    for i, first in enumerate(range(0, n_symbols, per_process)):
        args = [port, 100 + i, first, per_process, seconds, warmup]
        command = [sys.executable, "-m", "benchmarks.bench_ibkr", "--worker", *map(str, args)]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + warmup + 120)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "quotes_per_s": sum(r["quotes_per_s"] for r in results),
        "messages_per_s": sum(r["messages_per_s"] for r in results),
        "client_cpu": sum(r["client_cpu"] for r in results),
        "connections": len(results),
        "symbols": n_symbols,
        "rejected": sum(r["rejected"] for r in results),
        "reconnects": sum(r["reconnects"] for r in results),
        "seconds": max(r["seconds"] for r in results),
    }


def _synthetic_reads(names: list[str], req_ids: list[int], n: int) -> list[bytes]:
    """``n`` reads, each one trade (8 TWS messages) per symbol, with prices that move."""
    reads = []
    for k in range(n):
        frames: list[bytes] = []
        for i, req_id in enumerate(req_ids):
            price = 100.0 + i + k * 0.01
            tick = SimTick(
                names[i], 0.0, price - 0.01, 100.0 + k, price + 0.01, 200.0 + k, price, 10.0 + k
            )
            frames += tick_frames(req_id, tick, 1000.0 + k, price, False, False)
        reads.append(b"".join(frames))
    return reads


async def measure_client_path(n_symbols: int, seconds: float) -> dict[str, Any]:
    """Quotes/s the client path absorbs from reads of one 8-message trade per symbol."""
    names = symbols(n_symbols)
    async with SimulatedGateway(names, port=0, tick_interval=0.05) as gw:
        source = IBKRStreamSource(
            names, ibkr_settings=IBKRSettings(port=gw.port, client_id=1),
            market_open=lambda now: True,
        )  # fmt: skip
        registry = ProviderRegistry(entry_points=False)
        registry.register("ibkr", lambda **kw: source, replace=True)
        async with RuntimeOrchestrator(registry=registry) as rt:
            channel = await rt.quotes_to_channel(names, max_buffer=65_536, provider="ibkr")
            gw.pause_data(True)  # from now on only the reads fed below arrive
            ib = source.ib
            by_symbol = {t.contract.symbol: r for r, t in ib.wrapper.reqId2Ticker.items()}
            reads = _synthetic_reads(names, [by_symbol[name] for name in names], 64)
            feed = ib.client.conn.hasData.emit  # what the socket calls on every read
            received = 0

            async def consume() -> None:
                nonlocal received
                while True:
                    received += len(await channel.get_batch(8192))

            consumer = asyncio.create_task(consume())
            msgs0 = source.stats()["messages_received"]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            i = 0
            while time.perf_counter() - wall0 < seconds:
                feed(reads[i % len(reads)])
                i += 1
                await asyncio.sleep(0)  # let the runtime pump and the consumer run
            while received < source.stats()["emitted"]:  # noqa: ASYNC110 (yield until drained)
                await asyncio.sleep(0)
            wall = time.perf_counter() - wall0
            cpu = (time.process_time() - cpu0) / wall
            msgs = source.stats()["messages_received"] - msgs0
            consumer.cancel()
    return {
        "quotes_per_s": received / wall,
        "messages_per_s": msgs / wall,
        "client_cpu": cpu,
        "connections": 1,
        "symbols": n_symbols,
        "rejected": source.stats()["rejected"],
        "reconnects": 0,
        "seconds": wall,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every scenario; the figures, JSON-ready."""
    quiet_logging()
    seconds, warmup = (4.0, 2.0) if quick else (10.0, 3.0)
    headline = GatewayConfig(50, time_compression=300.0, tick_interval=0.0005)
    busy = GatewayConfig(50, time_compression=1000.0, tick_interval=0.005)
    wide = GatewayConfig(500, time_compression=30.0, tick_interval=0.01)
    scenarios: list[dict[str, Any]] = []

    def record(name: str, gateway: str, figures: dict[str, Any]) -> None:
        per_cpu = figures["quotes_per_s"] / figures["client_cpu"] if figures["client_cpu"] else 0
        scenarios.append(
            {"scenario": name, "gateway": gateway, **figures, "quotes_per_cpu_s": per_cpu}
        )

    with gateway_process(headline) as port:
        figures = asyncio.run(measure_streams(port, _streams(50, 50, 1), seconds, warmup))
        record("50 symbols", headline.label(), figures)
    if not quick:
        with gateway_process(busy) as port:
            for chunk in (8192, None):
                figures = asyncio.run(
                    measure_streams(port, _streams(50, 50, 2), seconds, warmup, chunk)
                )
                record(f"50 symbols, read_chunk={chunk}", busy.label(), figures)
    with gateway_process(wide) as port:
        figures = asyncio.run(measure_streams(port, _streams(500, 100, 10), seconds, warmup))
        record("500 symbols, 5 connections, 1 process", wide.label(), figures)
        if not quick:
            figures = measure_processes(port, 500, 100, seconds, warmup)
            record("500 symbols, 5 connections, 5 processes", wide.label(), figures)
    figures = asyncio.run(measure_client_path(50, seconds))
    record("client path only, 50 symbols", "none: reads fed in", figures)
    end_to_end = next(s["quotes_per_s"] for s in scenarios if s["scenario"] == "50 symbols")
    return {
        "benchmark": "ibkr",
        "when": now_iso(),
        "machine": machine(),
        "quick": quick,
        "window_s": seconds,
        "target_quotes_per_s_50_symbols": TARGET_QUOTES_PER_S,
        "quotes_per_s_50_symbols": end_to_end,
        "met_target": end_to_end >= TARGET_QUOTES_PER_S,
        "client_path_quotes_per_s": scenarios[-1]["quotes_per_s"],
        "scenarios": scenarios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer scenarios")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        port, client_id, first, count = (int(v) for v in args.worker[:4])
        _worker(port, client_id, first, count, float(args.worker[4]), float(args.worker[5]))
        return
    result = run(quick=args.quick)
    headers = ["scenario", "gateway", "quotes/s", "TWS msgs/s", "msgs/quote", "client CPU",
               "quotes/CPU-s", "rejected"]  # fmt: skip
    rows = [
        (
            s["scenario"],
            s["gateway"],
            f"{s['quotes_per_s']:,.0f}",
            f"{s['messages_per_s']:,.0f}",
            f"{s['messages_per_s'] / max(s['quotes_per_s'], 1):.1f}",
            f"{s['client_cpu']:.0%}",
            f"{s['quotes_per_cpu_s']:,.0f}",
            s["rejected"],
        )
        for s in result["scenarios"]
    ]
    print(markdown_table(headers, rows))
    verdict = "met" if result["met_target"] else "NOT met"
    print(
        f"\ntarget >= {TARGET_QUOTES_PER_S:,} quotes/s for 50 symbols, gateway to channel: "
        f"{verdict} ({result['quotes_per_s_50_symbols']:,.0f}); the client path alone "
        f"absorbs {result['client_path_quotes_per_s']:,.0f} quotes/s (one trade per read)"
    )
    print(f"machine: {result['machine']}")
    print(f"written to {write_json('ibkr', result)}")


if __name__ == "__main__":
    main()
