"""Write throughput into ``mdp.quotes``: the raw COPY limit against the sink (and coordinator).

    python -m benchmarks.bench_store            # 200k rows, median of 3 per configuration
    python -m benchmarks.bench_store --quick    # 50k rows, 1 repetition

Everything runs in one process on the same prebuilt rows and the same table, truncated
before every measurement, on a dedicated embedded server in a temporary directory (or, when
``MDP_PG_DSN`` is set, in a temporary database created on that server and dropped after).

(a) raw limit: prebuilt tuples, asyncpg binary COPY into a TEMP stage + ``INSERT ... ON
    CONFLICT DO NOTHING``, one transaction per batch, in tight loops on plain connections,
    sweeping batch size and parallel connections;
(b) ``QuotesSink.write`` from prebuilt ``Quote`` objects (so record -> tuple conversion,
    pool acquire/release and partition checks are measured), with the best batch size of
    (a) and 1/2/4 concurrent writers, each interleaved with (a) at the same settings
    ("x same" is the ratio of that pair);
(c) the ``WriteCoordinator`` path (``measure_coordinator``): quotes submitted one by one,
    batched by the coordinator (retry policy, circuit breaker, fsync'ing DLQ enabled);
(d) naive baseline: one autocommitted ``INSERT ... ON CONFLICT DO NOTHING`` per row (fewer
    rows: it is slow).

Every figure is the median of the repetitions (the raw figure at a configuration: of every
raw measurement there, sweep and interleaved). Prints rows/s, each as a ratio of the best
(a), and writes ``benchmarks/results/store.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from benchmarks.common import (
    bench_database,
    machine,
    markdown_table,
    median,
    now_iso,
    quiet_logging,
    server_version,
    write_json,
)
from mdp_core.coordinator import CoordinatorSettings, RetryPolicy, WriteCoordinator
from mdp_core.dlq import DeadLetterQueue
from mdp_core.models import Quote
from mdp_core.store.database import STAGE_DDL, STAGE_TABLES, Database
from mdp_core.store.sinks import QuotesSink

BATCH_SIZES = (1000, 2000, 5000, 10000)
COORDINATOR_BATCH_SIZES = BATCH_SIZES[-2:]
PARALLEL = (1, 2, 4)
SYMBOLS = 100
STAGE = STAGE_TABLES["quotes"]
COLUMNS = QuotesSink.columns
INSERT = QuotesSink._insert_sql


def build_quotes(n: int) -> list[Quote]:
    """``n`` quotes with unique keys over ``SYMBOLS`` symbols, all on one UTC day."""
    base = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    symbols = [f"SYM{i:03d}" for i in range(SYMBOLS)]
    prices = [100.0 + (i % 97) * 0.01 for i in range(1000)]
    step = timedelta(milliseconds=1)
    return [
        Quote(
            symbols[i % SYMBOLS],
            base + (i // SYMBOLS) * step,
            bid=prices[i % 1000],
            ask=prices[(i + 3) % 1000],
            bid_size=100.0,
            ask_size=200.0,
            last=prices[(i + 1) % 1000],
            last_size=float(1 + i % 9),
            source="bench",
        )
        for i in range(n)
    ]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _truncate(db: Database) -> None:
    await db.pool.execute("TRUNCATE mdp.quotes")


async def _check(db: Database, expected: int) -> None:
    got = await db.count("quotes")
    if got != expected:
        raise RuntimeError(f"benchmark wrote {got} rows, expected {expected}")


# -- (a) raw limit --------------------------------------------------------------------------


async def measure_raw(
    db: Database, rows: list[tuple[Any, ...]], batch_size: int, connections: int
) -> float:
    """Rows/s of COPY -> stage -> INSERT ON CONFLICT from prebuilt tuples."""
    await _truncate(db)
    conns = [await asyncpg.connect(db.dsn) for _ in range(connections)]
    try:
        for conn in conns:
            await conn.execute(STAGE_DDL)
        batches = iter(_chunks(rows, batch_size))

        async def worker(conn: asyncpg.Connection) -> None:
            for batch in batches:  # shared iterator: each batch goes to one worker
                async with conn.transaction():
                    await conn.copy_records_to_table(STAGE, records=batch, columns=COLUMNS)
                    await conn.execute(INSERT)

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            await conn.close()
    await _check(db, len(rows))
    return len(rows) / elapsed


# -- (b) the sink ---------------------------------------------------------------------------


async def measure_sink(db: Database, quotes: list[Quote], batch_size: int, writers: int) -> float:
    """Rows/s of ``QuotesSink.write`` from prebuilt ``Quote`` objects."""
    await _truncate(db)
    sink = QuotesSink(db)
    batches = iter(_chunks(quotes, batch_size))

    async def worker() -> None:
        for batch in batches:
            await sink.write(batch)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(writers)))
    elapsed = time.perf_counter() - start
    await _check(db, len(quotes))
    return len(quotes) / elapsed


# -- (c) the coordinator --------------------------------------------------------------------


async def measure_coordinator(
    db: Database, quotes: list[Quote], batch_size: int, workers: int
) -> float:
    """(c) Rows/s of submitting ``quotes`` one by one to a ``WriteCoordinator`` over
    ``QuotesSink(db)`` (``batch_size``, ``workers``; default retry policy, circuit breaker
    and a real fsync'ing DLQ in a temporary directory) and draining it."""
    await _truncate(db)
    settings = CoordinatorSettings(
        capacity=max(20_000, 2 * batch_size * workers), workers=workers, batch_size=batch_size
    )
    with tempfile.TemporaryDirectory(prefix="mdp-bench-dlq-") as spool:
        coord = WriteCoordinator(
            QuotesSink(db), settings, RetryPolicy(max_attempts=5), DeadLetterQueue(spool)
        )
        start = time.perf_counter()
        async with coord:
            submit = coord.submit
            for quote in quotes:
                await submit(quote)
            await coord.drain()
        elapsed = time.perf_counter() - start
    health = coord.stats()
    if health.dead_lettered or health.retries:
        raise RuntimeError(f"coordinator benchmark had failures: {health}")
    await _check(db, len(quotes))
    return len(quotes) / elapsed


# -- (d) naive baseline ---------------------------------------------------------------------


async def measure_naive(db: Database, rows: list[tuple[Any, ...]]) -> float:
    """Rows/s of one autocommitted INSERT per row on one connection."""
    await _truncate(db)
    placeholders = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
    sql = (
        f"INSERT INTO mdp.quotes ({', '.join(COLUMNS)}) VALUES ({placeholders}) "
        "ON CONFLICT DO NOTHING"
    )
    async with db.pool.acquire() as conn:
        start = time.perf_counter()
        for row in rows:
            await conn.execute(sql, *row)
        elapsed = time.perf_counter() - start
    await _check(db, len(rows))
    return len(rows) / elapsed


# -- the run --------------------------------------------------------------------------------


def _conversion_ns(quotes: list[Quote], batch_size: int = 5000) -> float:
    """Best-of-3 cost of ``QuotesSink.rows`` per record, in batches (GC enabled, as live)."""
    batches = _chunks(quotes, batch_size)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for batch in batches:
            QuotesSink.rows(batch)
        best = min(best, time.perf_counter() - start)
    return best / len(quotes) * 1e9


async def run_async(quick: bool = False) -> dict[str, Any]:
    n = 50_000 if quick else 200_000
    n_naive = 2_000 if quick else 5_000
    repeats = 1 if quick else 3
    host = machine()  # the load average at the start
    quotes = build_quotes(n)
    rows = QuotesSink.rows(quotes)
    convert_ns = _conversion_ns(quotes)

    async with bench_database(max_size=max(PARALLEL) + 1) as db:
        await QuotesSink(db).write(quotes[:10])  # create the day's partition, warm the pool

        # Every raw measurement per (batch size, connections): sweep and interleaved runs.
        raw_runs: defaultdict[tuple[int, int], list[float]] = defaultdict(list)
        for batch_size in BATCH_SIZES:
            for connections in PARALLEL:
                for _ in range(repeats):
                    rate = await measure_raw(db, rows, batch_size, connections)
                    raw_runs[batch_size, connections].append(rate)
        best_batch = max(raw_runs, key=lambda k: median(raw_runs[k]))[0]

        # (b) interleaved with (a) at the same batch size and parallelism, so that load from
        # elsewhere on the machine hits both alike; the raw figures join the sweep's.
        sink: list[dict[str, Any]] = []
        for writers in PARALLEL:
            raw_rates, sink_rates = [], []
            for _ in range(repeats):
                raw_rates.append(await measure_raw(db, rows, best_batch, writers))
                sink_rates.append(await measure_sink(db, quotes, best_batch, writers))
            raw_runs[best_batch, writers].extend(raw_rates)
            sink.append(
                {
                    "batch_size": best_batch,
                    "writers": writers,
                    "rows_per_s": median(sink_rates),
                    "raw_same_rows_per_s": median(raw_rates),
                    "ratio_to_raw_same": median(sink_rates) / median(raw_rates),
                    "runs_rows_per_s": sink_rates,
                }
            )

        # (c) interleaved with (a) the same way as (b); like (a), at each of the largest batch
        # sizes, so the coordinator too is reported at its best.
        coordinator: list[dict[str, Any]] = []
        for batch_size in COORDINATOR_BATCH_SIZES:
            for workers in PARALLEL:
                raw_rates, coord_rates = [], []
                for _ in range(repeats):
                    coord_rates.append(await measure_coordinator(db, quotes, batch_size, workers))
                    raw_rates.append(await measure_raw(db, rows, batch_size, workers))
                raw_runs[batch_size, workers].extend(raw_rates)
                coordinator.append(
                    {
                        "batch_size": batch_size,
                        "workers": workers,
                        "rows_per_s": median(coord_rates),
                        "raw_same_rows_per_s": median(raw_rates),
                        "ratio_to_raw_same": median(coord_rates) / median(raw_rates),
                        "runs_rows_per_s": coord_rates,
                    }
                )

        naive = await measure_naive(db, rows[:n_naive])
        version = await server_version(db)
        where = "MDP_PG_DSN" if db.embedded is None else "embedded"

    raw: list[dict[str, Any]] = [
        {
            "batch_size": batch_size,
            "connections": connections,
            "rows_per_s": median(runs),
            "runs_rows_per_s": runs,
        }
        for (batch_size, connections), runs in raw_runs.items()
    ]
    best = max(raw, key=lambda r: r["rows_per_s"])

    limit = best["rows_per_s"]
    for entry in (*raw, *sink, *coordinator):
        entry["ratio_to_raw_best"] = entry["rows_per_s"] / limit
    return {
        "benchmark": "store",
        "when": now_iso(),
        "machine": {**host, "postgres": version, "server": where},
        "rows": n,
        "repeats": repeats,
        "statistic": "median",
        "record_to_tuple_ns_per_row": convert_ns,
        "raw": raw,
        "raw_best": best,
        "sink": sink,
        "coordinator": coordinator,
        "naive": {"rows": n_naive, "rows_per_s": naive, "ratio_to_raw_best": naive / limit},
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run every measurement once (see the module docstring); return the results."""
    return asyncio.run(run_async(quick))


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table (raw: the best batch size per parallelism)."""
    r = result
    rows = []
    for par in sorted({x["connections"] for x in r["raw"]}):
        best = max((x for x in r["raw"] if x["connections"] == par), key=lambda x: x["rows_per_s"])
        mark = " (limit)" if best == r["raw_best"] else ""
        rows.append(
            (
                f"(a) raw COPY + upsert{mark}",
                best["batch_size"],
                par,
                f"{best['rows_per_s']:,.0f}",
                f"{best['ratio_to_raw_best']:.2f}",
                "-",
            )
        )
    for label, key, par_key in (
        ("(b) QuotesSink.write", "sink", "writers"),
        ("(c) WriteCoordinator", "coordinator", "workers"),
    ):
        for x in r[key]:
            rows.append(
                (
                    label,
                    x["batch_size"],
                    x[par_key],
                    f"{x['rows_per_s']:,.0f}",
                    f"{x['ratio_to_raw_best']:.2f}",
                    f"{x['ratio_to_raw_same']:.2f}",
                )
            )
    d = r["naive"]
    rows.append(
        (
            "(d) naive INSERT per row",
            1,
            1,
            f"{d['rows_per_s']:,.0f}",
            f"{d['ratio_to_raw_best']:.3f}",
            "-",
        )
    )
    headers = ("path", "batch", "parallel", "rows/s", "x raw limit", "x raw same")
    return markdown_table(headers, rows)


def describe(result: dict[str, Any]) -> str:
    r, m = result, result["machine"]
    return (
        f"{r['rows']:,} quotes per measurement (naive: {r['naive']['rows']:,}), median of "
        f"{r['repeats']} (raw: best batch size per parallelism shown, the full sweep is in "
        "the JSON); parallel = connections (a) / writers (b) / workers (c). Reference: the "
        "raw limit, asyncpg binary COPY into a TEMP stage + INSERT ON CONFLICT from prebuilt "
        "tuples; `x raw same` = against raw at the same batch size and parallelism, "
        f"interleaved. Record -> tuple {r['record_to_tuple_ns_per_row']:.0f} ns/row; "
        f"PostgreSQL {m['postgres']} ({m['server']})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, one repetition")
    args = parser.parse_args(argv)
    quiet_logging()
    result = run(quick=args.quick)
    print(table(result))
    print(describe(result))
    print(f"wrote {write_json('store', result)}")


if __name__ == "__main__":
    main()
