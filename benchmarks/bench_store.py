"""Write throughput into ``mdp.quotes``: the two raw COPY limits against the sink and the
coordinator, and where the time of a record goes.

    python -m benchmarks.bench_store            # 200k rows, median of 3 per configuration
    python -m benchmarks.bench_store --quick    # 50k rows, 1 repetition
    python -m benchmarks.bench_store --rows 100000 --repeats 3

Everything runs in one process on the same prebuilt rows and the same table, truncated
before every measurement of new rows, on a dedicated embedded server in a temporary
directory (or, when ``MDP_PG_DSN`` is set, in a temporary database created on that server
and dropped after).

(a) raw limits: prebuilt tuples, one transaction per batch, in tight loops on plain
    connections, sweeping batch size and parallel connections, for the sinks' two write
    paths: ``direct`` (binary COPY straight into ``mdp.quotes``: the fast path) and
    ``idempotent`` (binary COPY into a TEMP stage + ``INSERT ... ON CONFLICT DO NOTHING``);
(b) ``QuotesSink.write`` from prebuilt ``Quote`` objects (so record -> tuple conversion,
    pool acquire/release and partition checks are measured), with the best batch size of
    (a) direct and 1/2/4 concurrent writers, each interleaved with (a) direct at the same
    settings ("x same" is the ratio of that pair);
(c) the ``WriteCoordinator`` path (``measure_coordinator``): quotes submitted one by one,
    batched by the coordinator (retry policy, circuit breaker, fsync'ing DLQ enabled), on
    all-new data and on all-duplicate data (every quote stored already), each with the
    sink's adaptive write path and with the sink held on the idempotent path (what the
    coordinator did before the fast path existed), interleaved with (a) direct;
(d) naive baseline: one autocommitted ``INSERT ... ON CONFLICT DO NOTHING`` per row (fewer
    rows: it is slow);
(e) profile (``profile``): nanoseconds per record of each stage, measured apart: submit,
    queue + batch (the coordinator over a sink that does nothing), record -> tuple, and the
    COPY of each path (this process's CPU, i.e. asyncpg's encoding, and the wall time).

Every figure is the median of the repetitions (the raw figure at a configuration: of every
raw measurement there, sweep and interleaved). Prints rows/s, each as a ratio of the best
(a) direct (the limit), and writes ``benchmarks/results/store.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from benchmarks.common import (
    bench_database,
    copy_raw,
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
from mdp_core.store.database import Database
from mdp_core.store.sinks import QuotesSink
from mdp_core.store.write_path import WritePathPolicy

BATCH_SIZES = (1000, 2000, 5000, 10000)
COORDINATOR_BATCH_SIZES = BATCH_SIZES[-2:]
PARALLEL = (1, 2, 4)
SYMBOLS = 100
COLUMNS = QuotesSink.columns
RawPath = Literal["direct", "idempotent"]
RAW_PATHS: tuple[RawPath, ...] = ("direct", "idempotent")


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


def idempotent_only() -> WritePathPolicy:
    """A policy that never tries the fast path: the sink as it was before the fast path."""
    return WritePathPolicy(hold_batches=2**62, hold_seconds=math.inf, start_idempotent=True)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _truncate(db: Database) -> None:
    await db.pool.execute("TRUNCATE mdp.quotes")


async def _check(db: Database, expected: int) -> None:
    got = await db.count("quotes")
    if got != expected:
        raise RuntimeError(f"benchmark wrote {got} rows, expected {expected}")


# -- (a) raw limits -------------------------------------------------------------------------


async def measure_raw_timed(
    db: Database,
    rows: list[tuple[Any, ...]],
    batch_size: int,
    connections: int,
    path: RawPath = "idempotent",
) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of writing prebuilt tuples by ``path``:
    ``direct`` COPY into mdp.quotes or ``idempotent`` COPY -> stage -> INSERT ON CONFLICT."""
    await _truncate(db)
    elapsed, cpu = await copy_raw(db.dsn, "quotes", rows, batch_size, connections, path)
    await _check(db, len(rows))
    return elapsed, cpu


async def measure_raw(
    db: Database,
    rows: list[tuple[Any, ...]],
    batch_size: int,
    connections: int,
    path: RawPath = "idempotent",
) -> float:
    """Rows/s of writing prebuilt tuples by ``path`` (see ``measure_raw_timed``)."""
    elapsed, _ = await measure_raw_timed(db, rows, batch_size, connections, path)
    return len(rows) / elapsed


# -- (b) the sink ---------------------------------------------------------------------------


async def measure_sink(db: Database, quotes: list[Quote], batch_size: int, writers: int) -> float:
    """Rows/s of ``QuotesSink.write`` from prebuilt ``Quote`` objects (new rows)."""
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
    db: Database,
    quotes: list[Quote],
    batch_size: int,
    workers: int,
    *,
    duplicates: bool = False,
    policy: WritePathPolicy | None = None,
) -> float:
    """(c) Rows/s of submitting ``quotes`` one by one to a ``WriteCoordinator`` over
    ``QuotesSink(db, policy)`` (``batch_size``, ``workers``; default retry policy, circuit
    breaker and a real fsync'ing DLQ in a temporary directory) and draining it. New rows
    (the table truncated first), or with ``duplicates`` all stored already (the table must
    hold exactly ``quotes``: nothing is new)."""
    if not duplicates:
        await _truncate(db)
    settings = CoordinatorSettings(
        capacity=max(20_000, 2 * batch_size * workers), workers=workers, batch_size=batch_size
    )
    with tempfile.TemporaryDirectory(prefix="mdp-bench-dlq-") as spool:
        coord = WriteCoordinator(
            QuotesSink(db, policy), settings, RetryPolicy(max_attempts=5), DeadLetterQueue(spool)
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
    if health.new_rows != (0 if duplicates else len(quotes)):
        raise RuntimeError(f"coordinator benchmark stored {health.new_rows} new rows")
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


# -- (e) profile ----------------------------------------------------------------------------


class _NullSink:
    """Takes every batch at once: what is left of the coordinator is its own work."""

    kind = "quote"

    async def write(self, batch: Sequence[Quote]) -> int:
        return len(batch)


async def _coordinator_overhead(quotes: list[Quote], batch_size: int) -> tuple[float, float]:
    """Seconds spent in ``submit`` (the queue never full: it never waits) and in draining
    (taking batches, bisection, settling), over a sink that does nothing."""
    settings = CoordinatorSettings(capacity=len(quotes) + 1, workers=1, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="mdp-bench-dlq-") as spool:
        coord = WriteCoordinator(_NullSink(), settings, dlq=DeadLetterQueue(spool))
        async with coord:
            submit = coord.submit
            start = time.perf_counter()
            for quote in quotes:
                await submit(quote)
            submitted = time.perf_counter()
            await coord.drain()
            drained = time.perf_counter()
    return submitted - start, drained - submitted


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


async def profile(
    db: Database, quotes: list[Quote], batch_size: int, repeats: int
) -> dict[str, Any]:
    """Nanoseconds per record of each stage (medians of ``repeats``): ``submit``,
    ``queue_batch`` (take, bisect, settle), ``to_tuple`` (record -> tuple), and per COPY
    path on one connection ``<path>_copy_cpu`` (asyncpg's encoding and protocol: this
    process's CPU) and ``<path>_copy_wall``. ``python_ns`` sums what the one event loop
    spends per record on the fast path, ``loop_ceiling_rows_per_s`` the rate that allows."""
    n = len(quotes)
    rows = QuotesSink.rows(quotes)
    runs: defaultdict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        submit_s, drain_s = await _coordinator_overhead(quotes, batch_size)
        runs["submit"].append(submit_s / n * 1e9)
        runs["queue_batch"].append(drain_s / n * 1e9)
        for path in RAW_PATHS:
            wall, cpu = await measure_raw_timed(db, rows, batch_size, 1, path)
            runs[f"{path}_copy_cpu"].append(cpu / n * 1e9)
            runs[f"{path}_copy_wall"].append(wall / n * 1e9)
    ns = {stage: median(values) for stage, values in runs.items()}
    ns["to_tuple"] = _conversion_ns(quotes, batch_size)
    python_ns = ns["submit"] + ns["queue_batch"] + ns["to_tuple"] + ns["direct_copy_cpu"]
    return {
        "batch_size": batch_size,
        "ns_per_record": ns,
        "python_ns": python_ns,
        "loop_ceiling_rows_per_s": 1e9 / python_ns,
    }


# -- the run --------------------------------------------------------------------------------


def _entry(runs: list[float], ref_runs: list[float], **settings: Any) -> dict[str, Any]:
    return {
        **settings,
        "rows_per_s": median(runs),
        "raw_same_rows_per_s": median(ref_runs),
        "ratio_to_raw_same": median(runs) / median(ref_runs),
        "runs_rows_per_s": runs,
    }


async def _coordinator_round(
    db: Database, quotes: list[Quote], rows: list[tuple[Any, ...]], bs: int, workers: int
) -> dict[str, float]:
    """One interleaved round of (c) at one setting, and (a) direct at the same one."""
    new = await measure_coordinator(db, quotes, bs, workers)
    dup = await measure_coordinator(db, quotes, bs, workers, duplicates=True)
    dup_before = await measure_coordinator(
        db, quotes, bs, workers, duplicates=True, policy=idempotent_only()
    )
    new_before = await measure_coordinator(db, quotes, bs, workers, policy=idempotent_only())
    raw = await measure_raw(db, rows, bs, workers, "direct")
    return {"new": new, "dup": dup, "new_before": new_before, "dup_before": dup_before, "raw": raw}


async def run_async(
    quick: bool = False, rows_n: int | None = None, repeats_n: int | None = None
) -> dict[str, Any]:
    n = rows_n or (50_000 if quick else 200_000)
    n_naive = 2_000 if quick else 5_000
    repeats = repeats_n or (1 if quick else 3)
    host = machine()  # the load average at the start
    quotes = build_quotes(n)
    rows = QuotesSink.rows(quotes)

    async with bench_database(max_size=max(PARALLEL) + 1) as db:
        await QuotesSink(db).write(quotes[:10])  # create the day's partition, warm the pool

        # Every raw measurement per (path, batch size, connections): sweep and interleaved.
        raw_runs: defaultdict[tuple[str, int, int], list[float]] = defaultdict(list)
        for batch_size in BATCH_SIZES:
            for connections in PARALLEL:
                for _ in range(repeats):
                    for path in RAW_PATHS:
                        rate = await measure_raw(db, rows, batch_size, connections, path)
                        raw_runs[path, batch_size, connections].append(rate)
        direct = {k: v for k, v in raw_runs.items() if k[0] == "direct"}
        best_batch = max(direct, key=lambda k: median(direct[k]))[1]

        # (b) interleaved with (a) direct at the same batch size and parallelism, so that
        # load from elsewhere on the machine hits both alike.
        sink: list[dict[str, Any]] = []
        for writers in PARALLEL:
            raw_rates, sink_rates = [], []
            for _ in range(repeats):
                raw_rates.append(await measure_raw(db, rows, best_batch, writers, "direct"))
                sink_rates.append(await measure_sink(db, quotes, best_batch, writers))
            raw_runs["direct", best_batch, writers].extend(raw_rates)
            sink.append(_entry(sink_rates, raw_rates, batch_size=best_batch, writers=writers))

        # (c) interleaved with (a) direct the same way; at each of the largest batch sizes.
        coordinator: list[dict[str, Any]] = []
        for batch_size in COORDINATOR_BATCH_SIZES:
            for workers in PARALLEL:
                rounds = [
                    await _coordinator_round(db, quotes, rows, batch_size, workers)
                    for _ in range(repeats)
                ]
                raw_rates = [r["raw"] for r in rounds]
                raw_runs["direct", batch_size, workers].extend(raw_rates)
                entry = _entry(
                    [r["new"] for r in rounds], raw_rates, batch_size=batch_size, workers=workers
                )
                for key in ("dup", "new_before", "dup_before"):
                    entry[f"{key}_rows_per_s"] = median(r[key] for r in rounds)
                    entry[f"{key}_runs_rows_per_s"] = [r[key] for r in rounds]
                entry["dup_ratio_to_before"] = entry["dup_rows_per_s"] / entry[
                    "dup_before_rows_per_s"
                ]  # fmt: skip
                entry["new_ratio_to_before"] = entry["rows_per_s"] / entry[
                    "new_before_rows_per_s"
                ]  # fmt: skip
                coordinator.append(entry)

        prof = await profile(db, quotes, COORDINATOR_BATCH_SIZES[-1], repeats)
        naive = await measure_naive(db, rows[:n_naive])
        version = await server_version(db)
        where = "MDP_PG_DSN" if db.embedded is None else "embedded"

    raw: list[dict[str, Any]] = [
        {
            "path": path,
            "batch_size": batch_size,
            "connections": connections,
            "rows_per_s": median(runs),
            "runs_rows_per_s": runs,
        }
        for (path, batch_size, connections), runs in raw_runs.items()
    ]
    best = {p: max((r for r in raw if r["path"] == p), key=lambda r: r["rows_per_s"])
            for p in RAW_PATHS}  # fmt: skip

    limit = best["direct"]["rows_per_s"]
    for entry in (*raw, *sink, *coordinator):
        entry["ratio_to_raw_best"] = entry["rows_per_s"] / limit
    coordinator_best = max(coordinator, key=lambda c: c["rows_per_s"])
    dup_best = max(coordinator, key=lambda c: c["dup_rows_per_s"])
    dup_before_best = max(coordinator, key=lambda c: c["dup_before_rows_per_s"])
    return {
        "benchmark": "store",
        "when": now_iso(),
        "machine": {**host, "postgres": version, "server": where},
        "rows": n,
        "repeats": repeats,
        "statistic": "median",
        "record_to_tuple_ns_per_row": prof["ns_per_record"]["to_tuple"],
        "raw": raw,
        "raw_best": best["direct"],
        "raw_best_idempotent": best["idempotent"],
        "sink": sink,
        "coordinator": coordinator,
        "coordinator_best": coordinator_best,
        # the best rate on duplicates against the best of the idempotent-only sink (each
        # at its own best setting): the coordinator's rate before the fast path
        "coordinator_dup_best": dup_best,
        "coordinator_dup_before_best": dup_before_best,
        "dup_ratio_to_before": dup_best["dup_rows_per_s"]
        / dup_before_best["dup_before_rows_per_s"],
        "profile": prof,
        "naive": {"rows": n_naive, "rows_per_s": naive, "ratio_to_raw_best": naive / limit},
    }


def run(quick: bool = False, rows: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """Run every measurement once (see the module docstring); return the results.
    ``rows`` and ``repeats`` override the defaults (of ``quick`` or the full run)."""
    return asyncio.run(run_async(quick, rows, repeats))


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table (raw: the best batch size per path and parallelism;
    coordinator: new rows, then duplicates, each with the sink's adaptive path and held on
    the idempotent one)."""
    r = result
    rows = []
    for path in RAW_PATHS:
        for par in sorted({x["connections"] for x in r["raw"]}):
            best = max(
                (x for x in r["raw"] if x["connections"] == par and x["path"] == path),
                key=lambda x: x["rows_per_s"],
            )
            label = "direct COPY" if path == "direct" else "COPY + upsert"
            mark = " (limit)" if best == r["raw_best"] else ""
            ratio = f"{best['ratio_to_raw_best']:.2f}"
            rows.append((f"(a) raw {label}{mark}", best["batch_size"], par,
                         f"{best['rows_per_s']:,.0f}", ratio, "-"))  # fmt: skip
    for x in r["sink"]:
        rows.append(("(b) QuotesSink.write, new", x["batch_size"], x["writers"],
                     f"{x['rows_per_s']:,.0f}", f"{x['ratio_to_raw_best']:.2f}",
                     f"{x['ratio_to_raw_same']:.2f}"))  # fmt: skip
    limit = r["raw_best"]["rows_per_s"]
    for label, key in (
        ("(c) coordinator, new", "rows_per_s"),
        ("(c) coordinator, new, idempotent only", "new_before_rows_per_s"),
        ("(c) coordinator, duplicates", "dup_rows_per_s"),
        ("(c) coordinator, duplicates, idempotent only", "dup_before_rows_per_s"),
    ):
        for x in r["coordinator"]:
            same = x[key] / x["raw_same_rows_per_s"]
            rows.append((label, x["batch_size"], x["workers"], f"{x[key]:,.0f}",
                         f"{x[key] / limit:.2f}", f"{same:.2f}"))  # fmt: skip
    d = r["naive"]
    rows.append(("(d) naive INSERT per row", 1, 1, f"{d['rows_per_s']:,.0f}",
                 f"{d['ratio_to_raw_best']:.3f}", "-"))  # fmt: skip
    headers = ("path", "batch", "parallel", "rows/s", "x direct limit", "x direct same")
    return markdown_table(headers, rows) + "\n\n" + profile_table(r["profile"])


PROFILE_STAGES = (
    ("submit", "submit (one by one, queue never full)"),
    ("queue_batch", "queue + batch (take, bisect, settle; a sink doing nothing)"),
    ("to_tuple", "encode: record -> tuple (QuotesSink.rows)"),
    ("direct_copy_cpu", "encode + send: direct COPY, this process's CPU (asyncpg)"),
    ("direct_copy_wall", "direct COPY, wall time (1 connection)"),
    ("idempotent_copy_cpu", "encode + send: COPY -> stage + upsert, this process's CPU"),
    ("idempotent_copy_wall", "COPY -> stage + upsert, wall time (1 connection)"),
)


def profile_table(prof: dict[str, Any]) -> str:
    """Where the time of a record goes, in ns per record."""
    ns = prof["ns_per_record"]
    rows = [(label, f"{ns[key]:,.0f}") for key, label in PROFILE_STAGES]
    rows.append(
        ("event loop per record on the fast path (submit + queue + encode + COPY CPU)",
         f"{prof['python_ns']:,.0f}")
    )  # fmt: skip
    return markdown_table((f"stage (batch {prof['batch_size']:,})", "ns/record"), rows)


def describe(result: dict[str, Any]) -> str:
    r, m = result, result["machine"]
    c, d = r["coordinator_best"], r["coordinator_dup_best"]
    before = r["coordinator_dup_before_best"]["dup_before_rows_per_s"]
    return (
        f"{r['rows']:,} quotes per measurement (naive: {r['naive']['rows']:,}), median of "
        f"{r['repeats']} (raw: best batch size per path and parallelism shown, the full sweep "
        "is in the JSON); parallel = connections (a) / writers (b) / workers (c). The "
        "limit: asyncpg binary COPY straight into mdp.quotes from prebuilt tuples (direct, "
        f"{r['raw_best']['rows_per_s']:,.0f} rows/s); COPY + upsert is the idempotent path "
        f"({r['raw_best_idempotent']['rows_per_s']:,.0f} rows/s). `x direct same` = against "
        "raw direct at the same batch size and parallelism, interleaved. 'idempotent only': "
        "the sink held on the idempotent path (the coordinator before the fast path). Best "
        f"coordinator on new rows {c['rows_per_s']:,.0f} rows/s "
        f"({c['ratio_to_raw_best']:.2f} x the direct limit, {c['new_ratio_to_before']:.2f} x "
        f"idempotent only); on duplicates {d['dup_rows_per_s']:,.0f} rows/s "
        f"({r['dup_ratio_to_before']:.2f} x the best idempotent only, {before:,.0f} rows/s). "
        "The event loop's work per "
        f"record caps the coordinator near {r['profile']['loop_ceiling_rows_per_s']:,.0f} "
        f"rows/s. PostgreSQL {m['postgres']} ({m['server']})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, one repetition")
    parser.add_argument("--rows", type=int, help="quotes per measurement")
    parser.add_argument("--repeats", type=int, help="repetitions per configuration")
    args = parser.parse_args(argv)
    quiet_logging()
    result = run(quick=args.quick, rows=args.rows, repeats=args.repeats)
    print(table(result))
    print(describe(result))
    print(f"wrote {write_json('store', result)}")


if __name__ == "__main__":
    main()
