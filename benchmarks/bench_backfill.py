"""Backfill against IB's pacing: a month of 1-minute bars for 10 symbols from the simulated
gateway, against the lower bound the pacing rules allow for the backfill's request plan.

    python -m benchmarks.bench_backfill            # 10 symbols, January 2024, 3 runs
    python -m benchmarks.bench_backfill --quick    # 10 symbols, one week, 1 run (the ratio
                                                   # is not judged: its bound is 3 s)

IB allows at most 60 historical requests in any 10 minutes, no identical request within
15 s and at most 5 for one contract within 2 s. A month of regular-hours minutes is one
request per symbol and session (IB serves at most one day of 1-minute bars per request):
210 requests for 10 symbols in January 2024, so at least three full 10-minute windows. To
keep the benchmark short, the three windows of the rules are scaled by ``SCALE`` on both
sides, the gateway (``mdp gateway --history-pacing-scale``) and the backfill, and the bound
is computed with the same scaled rules: the ratio is what it would be at IB's pace.

Each run: a fresh ``mdp gateway`` subprocess (its pacing ledger empty), a fresh database,
``mdp_core.backfill.Backfill`` timed from start to end (connect, qualify, plan, fetch, commit;
wall clock). The lower bound is ``earliest_schedule`` of the plan: the time at which the
rules let the last request go if every answer came at once. Checked each run: the table
holds exactly the trading minutes of the range for every symbol, no pacing violation, the
accounting balances. The figure is the median ratio over the runs; the target is <= 1.2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import (
    bench_database,
    gateway_subprocess,
    machine,
    markdown_table,
    median,
    now_iso,
    quiet_logging,
    say,
    write_json,
)
from mdp_core.backfill import Backfill
from mdp_core.calendars import open_intervals
from mdp_core.providers.ibkr.pacing import PacingRules, earliest_schedule
from mdp_core.settings import IBKRSettings
from mdp_core.store.database import Database

SYMBOLS = ["AAPL", "MSFT", "SPY", "QQQ", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "IWM"]
SCALE = 0.02  # IB's windows x 0.02: 10 minutes -> 12 s, 15 s -> 0.3 s, 2 s -> 0.04 s
QUICK_SCALE = 0.005
TARGET_RATIO = 1.2
GATEWAY_START = "2024-03-01"  # the simulated "now": January lies in the past


@contextlib.contextmanager
def gateway(scale: float) -> Iterator[int]:
    """``mdp gateway`` with IB's pacing scaled by ``scale``, in a subprocess; its port."""
    with gateway_subprocess(
        "--symbols", ",".join(SYMBOLS), "--start", GATEWAY_START,
        "--history-pacing-scale", str(scale), "--log-level", "WARNING",
    ) as (port, _):  # fmt: skip
        yield port


def trading_minutes(start: datetime, end: datetime) -> int:
    spans = open_intervals("XNYS", start, end)
    return int(sum((hi - lo).total_seconds() for lo, hi in spans) // 60)


async def measure(
    port: int,
    db: Database,
    start: datetime,
    end: datetime,
    scale: float,
    symbols: list[str] = SYMBOLS,
) -> dict[str, Any]:
    """One backfill of ``symbols`` over ``[start, end)`` into ``db`` (empty)."""
    rules = PacingRules().scaled(scale)
    settings = IBKRSettings(host="127.0.0.1", port=port, client_id=41, connect_timeout=10.0)
    job = Backfill(db, symbols, start, end, "1m", ibkr_settings=settings, pacing=rules)
    t = time.perf_counter()
    result = await job.run()
    elapsed = time.perf_counter() - t
    rows = await db.pool.fetch(
        "SELECT symbol, count(*) AS n FROM mdp.bars WHERE resolution = '1m' GROUP BY 1"
    )
    bound = earliest_schedule(rules, [job.pacing_keys(r) for r in job.plan])[-1]
    expected = trading_minutes(start, end)
    h = result.coordinator
    return {
        "elapsed_s": round(elapsed, 3),
        "bound_s": round(bound, 3),
        "ratio": round(elapsed / bound, 4) if bound > 0 else None,
        "requests": result.planned,
        "bars": result.received,
        "committed": h.committed if h else 0,
        "waited_s": round(result.waited, 3),
        "pacing_violations": result.pacing_violations,
        "rows_ok": {r["symbol"]: r["n"] for r in rows} == {s: expected for s in symbols},
        "balanced": result.balanced,
        "failed": result.failed,
    }


async def _measure_fresh(port: int, start: datetime, end: datetime, scale: float) -> dict[str, Any]:
    async with bench_database() as db:
        return await measure(port, db, start, end, scale)


def run(quick: bool = False, runs: int | None = None) -> dict[str, Any]:
    quiet_logging()
    start = datetime(2024, 1, 2, tzinfo=UTC)
    end = datetime(2024, 1, 11, tzinfo=UTC) if quick else datetime(2024, 2, 1, tzinfo=UTC)
    scale = QUICK_SCALE if quick else SCALE
    runs = runs or (1 if quick else 3)
    tries = []
    for k in range(runs):
        with gateway(scale) as port:
            figures = asyncio.run(_measure_fresh(port, start, end, scale))
        say("backfill", f"run {k + 1}/{runs}: {figures}")
        tries.append(figures)
    ratios = [t["ratio"] for t in tries if t["ratio"] is not None]
    ratio = median(ratios) if ratios else None
    correct = all(
        t["rows_ok"] and t["balanced"] and not t["failed"] and t["pacing_violations"] == 0
        for t in tries
    )
    return {
        "benchmark": "backfill",
        "when": now_iso(),
        "machine": machine(),
        "quick": quick,
        "symbols": len(SYMBOLS),
        "range": [start.isoformat(), end.isoformat()],
        "resolution": "1m",
        "pacing_scale": scale,
        "trading_minutes_per_symbol": trading_minutes(start, end),
        "target_ratio": TARGET_RATIO,
        "ratio": ratio,
        "elapsed_s": median(t["elapsed_s"] for t in tries),
        "bound_s": tries[0]["bound_s"],
        "correct": correct,
        # a quick run's bound (a few seconds) is too short to judge the ratio against
        "passed": None if quick else correct and ratio is not None and ratio <= TARGET_RATIO,
        "runs": tries,
    }


def table(result: dict[str, Any]) -> str:
    headers = ["run", "requests", "bars", "lower bound", "elapsed", "x bound", "waited for pacing",
               "pacing violations", "rows = trading minutes"]  # fmt: skip
    rows = [
        (
            k + 1,
            r["requests"],
            f"{r['bars']:,}",
            f"{r['bound_s']:.1f} s",
            f"{r['elapsed_s']:.1f} s",
            "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
            f"{r['waited_s']:.1f} s",
            r["pacing_violations"],
            "yes" if r["rows_ok"] else "NO",
        )
        for k, r in enumerate(result["runs"])
    ]
    return markdown_table(headers, rows)


def describe(result: dict[str, Any]) -> str:
    r = result
    scale = r["pacing_scale"]
    ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}"
    verdict = {True: "met", False: "NOT met", None: "not judged in quick mode"}[r["passed"]]
    return (
        f"{r['symbols']} symbols, 1-minute bars of regular hours over "
        f"[{r['range'][0][:10]}, {r['range'][1][:10]}) ({r['trading_minutes_per_symbol']:,} "
        f"minutes each), {'quick' if r['quick'] else 'full'} mode. IB's pacing windows scaled "
        f"by {scale:g} on both sides (10 minutes -> {600 * scale:g} s) and in the bound alike. "
        f"Target: elapsed <= {r['target_ratio']} x the lower bound the rules allow for the "
        f"plan: {verdict} (median ratio {ratio}; {r['elapsed_s']:.1f} s against "
        f"{r['bound_s']:.1f} s); every run stored exactly the trading minutes with no pacing "
        f"violation: {'yes' if r['correct'] else 'NO'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one week, one run")
    parser.add_argument("--runs", type=int, help="runs (default 3, 1 with --quick)")
    args = parser.parse_args()
    result = run(quick=args.quick, runs=args.runs)
    print(table(result))
    print(f"\n{describe(result)}")
    print(f"machine: {result['machine']}")
    print(f"written to {write_json('backfill', result)}")


if __name__ == "__main__":
    main()
