"""``mdp import`` of one million 1-minute bars against the raw COPY limits for bars.

    python -m benchmarks.bench_import            # 1,000,000 bars, median of 3
    python -m benchmarks.bench_import --quick    # 50,000 bars, 1 run

Data: 100 symbols x 10,000 consecutive minutes (about a week) of 1-minute bars, written once
(untimed) as a CSV file with a header (``symbol,ts,open,high,low,close,volume``, ISO times
with an offset), the same bars also kept as prebuilt tuples. Everything runs on a dedicated
embedded server (or a temporary database on ``MDP_PG_DSN``); ``mdp.bars`` is truncated
before every measurement, its daily partitions created once beforehand.

(a) raw limits: the prebuilt tuples, asyncpg binary COPY, one transaction per batch, in
    tight loops on plain connections: ``idempotent``, into the TEMP stage + ``INSERT ... ON
    CONFLICT DO NOTHING`` (the sinks' statement; the target's reference), and ``direct``,
    straight into ``mdp.bars`` (the fast path's limit); a sweep of batch sizes and
    connections each, then the best configurations again, interleaved with (b);
(b) ``mdp import FILE`` as a user runs it (a subprocess, default settings: 2 workers),
    wall time from start to exit: process start, reading the CSV, validating in columns,
    pgpq encoding, COPY (new bars: straight into the table, the fast path);
(c) for reference, the live path the import replaces: ``mdp stream --provider replay``
    over the same file (replay provider -> channel -> WriteCoordinator -> BarsSink), once.

Every run is checked to store all the bars. Figures are the medians; writes
``benchmarks/results/import.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    bench_database,
    copy_raw,
    machine,
    markdown_table,
    median,
    now_iso,
    quiet_logging,
    say,
    server_version,
    write_json,
)
from mdp_core.store.database import Database

TARGET_RATIO = 0.7
SYMBOLS = 100
START = datetime(2024, 1, 2, tzinfo=UTC)
BATCH_SIZES = (10_000, 50_000)
PARALLEL = (1, 2, 4)
RAW_PATHS = ("idempotent", "direct")
MDP = str(Path(sys.executable).with_name("mdp"))
#: What a run stored, to compare paths (the smoke test does).
STORED_SQL = (
    "SELECT symbol, resolution, ts, open, high, low, close, volume FROM mdp.bars "
    "ORDER BY symbol, resolution, ts"
)


def build_bars(n: int) -> list[tuple[Any, ...]]:
    """``n`` 1-minute bars over ``SYMBOLS`` symbols, as stage tuples (``BarsSink.columns``)."""
    symbols = [f"S{i:03d}" for i in range(SYMBOLS)]
    minute = timedelta(minutes=1)
    rows = []
    for i in range(n):
        price = 100.0 + (i % 97) * 0.01
        rows.append((symbols[i % SYMBOLS], "1m", START + (i // SYMBOLS) * minute, price,
                     price + 0.25, price - 0.25, price + 0.1, float(100 + i % 900), None, None,
                     "import", False))  # fmt: skip
    return rows


def write_csv(rows: Sequence[tuple[Any, ...]], path: Path) -> None:
    """The bars as a CSV file, as a vendor would ship them."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["symbol", "ts", "open", "high", "low", "close", "volume"])
        for sym, _, ts, o, h, lo, c, v, *_ in rows:
            out.writerow([sym, ts.isoformat(sep=" "), o, h, lo, c, int(v)])


async def _reset(db: Database) -> None:
    await db.pool.execute("TRUNCATE mdp.bars")


async def _check(db: Database, expected: int) -> None:
    got = await db.count("bars")
    if got != expected:
        raise RuntimeError(f"benchmark stored {got} bars, expected {expected}")


async def measure_raw(
    db: Database,
    rows: list[tuple[Any, ...]],
    batch_size: int,
    connections: int,
    path: str = "idempotent",
) -> float:
    """(a) Rows/s of COPY -> stage -> INSERT ON CONFLICT (``idempotent``), or of COPY into
    mdp.bars (``direct``), from prebuilt tuples."""
    await _reset(db)
    elapsed, _ = await copy_raw(db.dsn, "bars", rows, batch_size, connections, path)
    await _check(db, len(rows))
    return len(rows) / elapsed


async def _timed_command(db: Database, argv: list[str], expected: int) -> float:
    """Rows/s of a command (wall time, start to exit) that stores ``expected`` bars."""
    await _reset(db)
    env = {**os.environ, "MDP_LOG_LEVEL": "WARNING"}
    start = time.perf_counter()
    proc = await asyncio.to_thread(
        subprocess.run, argv, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[1]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    await _check(db, expected)
    return expected / elapsed


async def measure_import(db: Database, path: Path, expected: int) -> float:
    """(b) Rows/s of ``mdp import`` of ``path`` (a subprocess)."""
    argv = [MDP, "import", str(path), "--dsn", db.dsn, "--quiet"]
    return await _timed_command(db, argv, expected)


async def measure_live(db: Database, path: Path, expected: int) -> float:
    """(c) Rows/s of ``mdp stream --provider replay`` over ``path`` (a subprocess)."""
    symbols = ",".join(f"S{i:03d}" for i in range(SYMBOLS))
    argv = [MDP, "stream", "--provider", "replay", "--mode", "bars", "--resolution", "1m",
            "--option", f"path={path}", "--symbols", symbols, "--name", "bench-live",
            "--dsn", db.dsn, "--quiet"]  # fmt: skip
    return await _timed_command(db, argv, expected)


async def run_async(quick: bool = False) -> dict[str, Any]:
    n = 50_000 if quick else 1_000_000
    repeats = 1 if quick else 3
    host = machine()
    rows = build_bars(n)
    with tempfile.TemporaryDirectory(prefix="mdp-bench-import-") as tmp:
        path = Path(tmp) / "bars_1min.csv"
        write_csv(rows, path)
        size = path.stat().st_size
        os.environ["MDP_HOME"] = str(Path(tmp) / "home")  # the subprocesses' rejects, DLQ
        async with bench_database(max_size=max(PARALLEL) + 1) as db:
            days = {(START + timedelta(days=d)).date() for d in range(n // SYMBOLS // 1440 + 2)}
            await db.ensure_partitions("bars", days)

            sweeps: dict[str, dict[tuple[int, int], list[float]]] = {}
            for how in RAW_PATHS:
                sweep = sweeps[how] = {}
                for batch_size in BATCH_SIZES:
                    for connections in PARALLEL:
                        rate = await measure_raw(db, rows, batch_size, connections, how)
                        sweep[batch_size, connections] = [rate]
                        say("import", f"raw {how} batch {batch_size:,} x {connections}: "
                                      f"{rate:,.0f} rows/s")  # fmt: skip
            bests = {how: max(s, key=lambda k, s=s: median(s[k])) for how, s in sweeps.items()}
            raw_runs: dict[str, list[float]] = {how: [] for how in RAW_PATHS}
            import_runs: list[float] = []
            for _ in range(repeats):  # interleaved, so load from elsewhere hits all alike
                import_runs.append(await measure_import(db, path, n))
                for how in RAW_PATHS:
                    raw_runs[how].append(await measure_raw(db, rows, *bests[how], how))
                say("import", f"import {import_runs[-1]:,.0f} rows/s, raw idempotent "
                              f"{raw_runs['idempotent'][-1]:,.0f}, direct "
                              f"{raw_runs['direct'][-1]:,.0f}")  # fmt: skip
            for how in RAW_PATHS:
                sweeps[how][bests[how]] += raw_runs[how]
            live = await measure_live(db, path, n)
            say("import", f"live path {live:,.0f} rows/s")
            version = await server_version(db)
            where = "MDP_PG_DSN" if db.embedded is None else "embedded"

    sweep, best = sweeps["idempotent"], bests["idempotent"]
    limit = median(sweep[best])
    direct = median(sweeps["direct"][bests["direct"]])
    imported = median(import_runs)
    paired = median(i / r for i, r in zip(import_runs, raw_runs["idempotent"], strict=True))
    return {
        "benchmark": "import",
        "when": now_iso(),
        "machine": {**host, "postgres": version, "server": where},
        "rows": n,
        "csv_bytes": size,
        "repeats": repeats,
        "statistic": "median",
        "raw": [
            {"batch_size": b, "connections": c, "rows_per_s": median(r), "runs_rows_per_s": r}
            for (b, c), r in sweep.items()
        ],
        "raw_best": {"batch_size": best[0], "connections": best[1], "rows_per_s": limit},
        "raw_direct": [
            {"batch_size": b, "connections": c, "rows_per_s": median(r), "runs_rows_per_s": r}
            for (b, c), r in sweeps["direct"].items()
        ],
        "raw_direct_best": {
            "batch_size": bests["direct"][0],
            "connections": bests["direct"][1],
            "rows_per_s": direct,
        },
        "import": {
            "rows_per_s": imported,
            "runs_rows_per_s": import_runs,
            "ratio_to_raw": imported / limit,
            "ratio_to_raw_paired": paired,
            "ratio_to_direct": imported / direct,
            "workers": 2,
        },
        "live": {"rows_per_s": live, "ratio_to_raw": live / limit},
        "target_ratio": TARGET_RATIO,
        "passed": imported / limit >= TARGET_RATIO,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run every measurement (see the module docstring); return the results."""
    return asyncio.run(run_async(quick))


def table(result: dict[str, Any]) -> str:
    r = result
    limit = r["raw_best"]["rows_per_s"]
    rows = []
    for x in sorted(r["raw"], key=lambda x: (x["connections"], x["batch_size"])):
        mark = " (limit)" if x["rows_per_s"] == limit else ""
        rows.append((f"(a) raw COPY + upsert{mark}", f"{x['batch_size']:,}", x["connections"],
                     f"{x['rows_per_s']:,.0f}", f"{x['rows_per_s'] / limit:.2f}"))  # fmt: skip
    for x in sorted(r.get("raw_direct", []), key=lambda x: (x["connections"], x["batch_size"])):
        rows.append(("(a) raw direct COPY", f"{x['batch_size']:,}", x["connections"],
                     f"{x['rows_per_s']:,.0f}", f"{x['rows_per_s'] / limit:.2f}"))  # fmt: skip
    i, lv = r["import"], r["live"]
    rows.append(("(b) mdp import (CSV file)", "-", i["workers"], f"{i['rows_per_s']:,.0f}",
                 f"{i['ratio_to_raw']:.2f}"))  # fmt: skip
    rows.append(("(c) mdp stream --provider replay", "-", "-", f"{lv['rows_per_s']:,.0f}",
                 f"{lv['ratio_to_raw']:.2f}"))  # fmt: skip
    return markdown_table(("path", "batch", "parallel", "rows/s", "x raw limit"), rows)


def describe(result: dict[str, Any]) -> str:
    r, m = result, result["machine"]
    verdict = "met" if r["passed"] else "NOT met"
    return (
        f"{r['rows']:,} 1-minute bars ({SYMBOLS} symbols, CSV of {r['csv_bytes'] / 2**20:.0f} "
        f"MiB), median of {r['repeats']}; (b) and (c) are wall times of the command, process "
        f"start to exit; raw = prebuilt tuples, asyncpg binary COPY into a TEMP stage + INSERT "
        f"ON CONFLICT, best of the sweep, interleaved with (b) (median of the paired ratios "
        f"{r['import']['ratio_to_raw_paired']:.2f}); {_direct(r)}Target: import >= "
        f"{r['target_ratio']} x raw ({verdict}); PostgreSQL {m['postgres']} ({m['server']})"
    )


def _direct(r: dict[str, Any]) -> str:
    """The import against the direct COPY limit (results before the fast path lack it)."""
    if "raw_direct_best" not in r:
        return ""
    return (
        f"raw direct COPY into mdp.bars {r['raw_direct_best']['rows_per_s']:,.0f} rows/s, the "
        f"import {r['import']['ratio_to_direct']:.2f} x that. "
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50,000 bars, one run")
    args = parser.parse_args(argv)
    quiet_logging()
    result = run(quick=args.quick)
    print(table(result))
    print(describe(result))
    print(f"wrote {write_json('import', result)}")


if __name__ == "__main__":
    main()
