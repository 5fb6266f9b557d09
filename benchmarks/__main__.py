"""Run every benchmark and write one report: ``benchmarks/results.md`` and ``results.json``.

    python -m benchmarks                      # everything (what ``make bench`` runs)
    python -m benchmarks --quick              # short versions, report to results-partial.*
    python -m benchmarks --only store,memory  # a subset, report to results-partial.*

Each benchmark runs in its own Python process (``python -m benchmarks --child NAME``), so
one's heap, event loop or failure does not touch the next; its ``run()`` figures come back
as JSON. Every figure is a median of several runs (each module repeats its measurements;
``ibkr`` its 50-symbol headline) and is shown against its reference measured in the same
run. Each module renders its own section (``table(result)`` and ``describe(result)``). A full
run also writes each benchmark's JSON to ``benchmarks/results/<name>.json``; a partial run
(``--quick`` / ``--only``) writes only ``benchmarks/results-partial.{md,json}``, so it never
overwrites the full report.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import machine, markdown_table, now_iso, quiet_logging, write_json

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 900  # one benchmark; the whole run is meant to take well under 15 minutes


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    title: str


BENCHMARKS = [
    Benchmark("operators", "benchmarks.bench_operators", "Stream operators (per event)"),
    Benchmark("store", "benchmarks.bench_store", "Write throughput into mdp.quotes"),
    Benchmark("ibkr", "benchmarks.bench_ibkr", "IBKR ingest (gateway -> ib_async -> Channel)"),
    Benchmark("latency", "benchmarks.bench_latency", "End-to-end latency (emit -> COMMIT)"),
    Benchmark("memory", "benchmarks.bench_memory", "Memory while the sink stalls (T7)"),
    Benchmark("rollups", "benchmarks.bench_rollups", "Rollups: SQL vs pandas"),
    Benchmark("read", "benchmarks.bench_read", "Reading bars back (read_bars, export)"),
    Benchmark("import", "benchmarks.bench_import", "Bulk import of bars (mdp import)"),
    Benchmark("backfill", "benchmarks.bench_backfill", "Backfill from IB at IB's pacing"),
]
BY_NAME = {b.name: b for b in BENCHMARKS}


# -- running ---------------------------------------------------------------------------


def _child(name: str, out: str, quick: bool) -> None:
    """In a child process: run one benchmark, write its figures (and its report section,
    rendered here where its module is loaded) as JSON to ``out``."""
    quiet_logging()
    module = importlib.import_module(BY_NAME[name].module)
    result = module.run(quick=quick)
    Path(out).write_text(
        json.dumps({"result": result, "section": section(name, result)}, default=str)
    )


def run_one(bench: Benchmark, quick: bool) -> dict[str, Any]:
    """Run ``bench`` in a child process; an entry with status, wall time and figures."""
    if importlib.util.find_spec(bench.module) is None:
        print(f"== {bench.name}: not available ({bench.module} not found)", flush=True)
        return {"status": "not available", "wall_s": 0.0, "result": None}
    print(f"== {bench.name}{' (quick)' if quick else ''}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mdp-bench-run-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks", "--child", bench.name, "--out", str(out)]
        if quick:
            cmd.append("--quick")
        try:
            proc = subprocess.run(cmd, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return _failed(f"timed out after {TIMEOUT_S} s", start)
        if proc.returncode != 0 or not out.exists():
            return _failed(f"exited with status {proc.returncode}", start)
        child = json.loads(out.read_text())
    wall = time.perf_counter() - start
    print(f"== {bench.name}: done in {wall:.0f} s", flush=True)
    return {
        "status": "ok",
        "wall_s": wall,
        "quick": quick,
        "result": child["result"],
        "section": child["section"],
    }


def _failed(reason: str, start: float) -> dict[str, Any]:
    print(f"== failed: {reason}", flush=True)
    return {"status": f"error: {reason}", "wall_s": time.perf_counter() - start, "result": None}


# -- the report --------------------------------------------------------------------------


def _ok(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    return entry["result"] if entry and entry["status"] == "ok" else None


def summary(entries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets, each with the measured figure, its reference and PASS/FAIL."""
    rows: list[dict[str, Any]] = []

    def add(
        target: str, source: str, measured: str, reference: str, ratio: str, passed: bool | None
    ) -> None:
        verdict = "n/a" if passed is None else "PASS" if passed else "FAIL"
        rows.append(
            {
                "target": target,
                "benchmark": source,
                "measured": measured,
                "reference": reference,
                "ratio": ratio,
                "result": verdict,
            }
        )

    def missing(target: str, source: str) -> None:
        status = entries.get(source, {}).get("status", "not run")
        add(target, source, status, "-", "-", None)

    store = _ok(entries.get("store"))
    if store:
        best = store["coordinator_best"]
        limit = store["raw_best"]["rows_per_s"]
        where = f"{best['workers']} workers, batch {best['batch_size']:,}"
        add(
            "coordinator path >= 0.7 x direct COPY limit (new rows)",
            "store",
            f"{best['rows_per_s']:,.0f} rows/s ({where})",
            f"direct limit {limit:,.0f} rows/s",
            f"{best['ratio_to_raw_best']:.2f} x",
            best["ratio_to_raw_best"] >= 0.7,
        )
        dup, before = store["coordinator_dup_best"], store["coordinator_dup_before_best"]
        where = f"{dup['workers']} workers, batch {dup['batch_size']:,}"
        add(
            "coordinator on duplicates >= 0.9 x idempotent-only coordinator",
            "store",
            f"{dup['dup_rows_per_s']:,.0f} rows/s ({where})",
            f"idempotent only {before['dup_before_rows_per_s']:,.0f} rows/s",
            f"{store['dup_ratio_to_before']:.2f} x",
            store["dup_ratio_to_before"] >= 0.9,
        )
        add(
            "coordinator path >= 50,000 quotes/s",
            "store",
            f"{best['rows_per_s']:,.0f} rows/s",
            "50,000 rows/s",
            f"{best['rows_per_s'] / 50_000:.2f} x",
            best["rows_per_s"] >= 50_000,
        )
    else:
        missing("coordinator path >= 0.7 x direct limit, duplicates >= 0.9 x, >= 50,000/s", "store")

    ops = _ok(entries.get("operators"))
    if ops:
        chain, bare = ops["stages"]["chain"], ops["stages"]["bare"]
        add(
            "operator chain < 3 us/event",
            "operators",
            f"{chain['us_per_event']:.2f} us/event",
            f"bare pass-through {bare['us_per_event']:.2f} us/event",
            f"{chain['ratio_to_bare']:.1f} x bare",
            chain["us_per_event"] < 3.0,
        )
        end_to_end = ops["chain_edge_to_chain"]["median"]
        add(
            "counting at the edge <= 5% of the operator chain",
            "operators",
            f"{ops['edge_us_per_event']:.3f} us/event (median of {ops['edge_pairs']} pairs)",
            f"chain {chain['us_per_event']:.2f} us/event; chain_edge / chain {end_to_end:.3f}",
            f"{ops['edge_share_of_chain']:.1%} of the chain",
            ops["edge_meets_target"],
        )
    else:
        missing("operator chain < 3 us/event, edge <= 5% of it", "operators")

    ibkr = _ok(entries.get("ibkr"))
    if ibkr:
        target, measured = ibkr["target_quotes_per_s_50_symbols"], ibkr["quotes_per_s_50_symbols"]
        add(
            f"IBKR >= {target:,} quotes/s (50 symbols)",
            "ibkr",
            f"{measured:,.0f} quotes/s (median of {ibkr['headline_runs']} runs)",
            f"target {target:,} quotes/s",
            f"{measured / target:.2f} x",
            ibkr["met_target"],
        )
    else:
        missing("IBKR >= 20,000 quotes/s (50 symbols)", "ibkr")

    lat = _ok(entries.get("latency"))
    if lat:
        t = lat["target"]
        flush = lat["coordinator"]["flush_interval_s"] * 1000
        add(
            f"end-to-end p99 <= {t['p99_ms_max']:.0f} ms at {t['rate_per_s']:,}/s",
            "latency",
            f"p99 {t['p99_ms']:.1f} ms",
            f"flush interval {flush:.0f} ms",
            f"{t['p99_ms'] / flush:.1f} x flush; {t['p99_ms'] / t['p99_ms_max']:.2f} x target",
            t["passed"],
        )
    else:
        missing("end-to-end p99 <= 100 ms at 10,000/s", "latency")

    mem = _ok(entries.get("memory"))
    if mem:
        add(
            f"RSS growth in a {mem['stall_s']:.0f} s stall within the capacities' bound",
            "memory",
            f"+{mem['growth_mib']:.1f} MiB (max {mem['rss_max_stall_mib']:.0f} MiB)",
            f"bound {mem['bound_mib']:.1f} + allowance {mem['allowance_mib']:.0f} MiB",
            f"{mem['growth_over_bound']:.2f} x",
            mem["within_bound"] and mem["balanced"],
        )
    else:
        missing("RSS growth during the stall bounded by the capacities", "memory")

    roll = _ok(entries.get("rollups"))
    if roll:
        add(
            "SQL rollup >= 5x faster than pandas",
            "rollups",
            f"SQL {roll['sql_s']:.2f} s",
            f"pandas {roll['pandas_s']['total_s']:.2f} s (read+resample+write)",
            f"{roll['speedup_total']:.1f} x faster",
            roll["passed"],
        )
    else:
        missing("SQL rollup >= 5x faster than pandas", "rollups")

    read = _ok(entries.get("read"))
    if read:
        rate, ratio, passed = read["rows_per_s"], read["ratios"], read["passed"]
        equal = read["check"]["equal"]
        rows_note = f"{read['rows']:,} 1m bars"
        add(
            "read_bars into pandas >= 0.7 x raw binary COPY",
            "read",
            f"{rate['read']:,.0f} rows/s ({rows_note})",
            f"raw COPY {rate['raw']:,.0f} rows/s",
            f"{ratio['read_to_raw']:.2f} x",
            passed["read_vs_raw"] and equal,
        )
        add(
            "read_bars >= 3 x fetch -> DataFrame",
            "read",
            f"{rate['read']:,.0f} rows/s",
            f"fetch + DataFrame {rate['fetch']:,.0f} rows/s",
            f"{ratio['read_to_fetch']:.1f} x",
            passed["read_vs_fetch"] and equal,
        )
        add(
            "Parquet export >= 0.3 x raw binary COPY",
            "read",
            f"{rate['export']:,.0f} rows/s ({read['export']['files']} files)",
            f"raw COPY {rate['raw']:,.0f} rows/s",
            f"{ratio['export_to_raw']:.2f} x",
            passed["export_vs_raw"] and equal,
        )
    else:
        missing("read_bars >= 0.7 x raw COPY and >= 3 x fetch; export >= 0.3 x raw", "read")
    imp = _ok(entries.get("import"))
    if imp:
        i, limit = imp["import"], imp["raw_best"]
        add(
            f"mdp import >= {imp['target_ratio']} x raw COPY -> upsert limit (bars)",
            "import",
            f"{i['rows_per_s']:,.0f} bars/s ({imp['rows']:,} 1-minute bars, CSV)",
            f"raw limit {limit['rows_per_s']:,.0f} rows/s; "
            + (
                f"direct COPY {imp['raw_direct_best']['rows_per_s']:,.0f}; "
                if "raw_direct_best" in imp
                else ""
            )
            + f"live path {imp['live']['rows_per_s']:,.0f} bars/s",
            f"{i['ratio_to_raw']:.2f} x",
            imp["passed"],
        )
    else:
        missing("mdp import >= 0.7 x raw COPY -> upsert limit (bars)", "import")
    back = _ok(entries.get("backfill"))
    if back:
        ratio = back["ratio"]
        add(
            f"backfill within {back['target_ratio']} x the pacing rules' lower bound",
            "backfill",
            f"{back['elapsed_s']:.1f} s for {back['runs'][0]['requests']} requests "
            f"(pacing x {back['pacing_scale']:g})",
            f"lower bound {back['bound_s']:.1f} s",
            "-" if ratio is None else f"{ratio:.2f} x",
            back["passed"],
        )
    else:
        missing("backfill within 1.2 x the pacing rules' lower bound", "backfill")
    return rows


def section(name: str, result: dict[str, Any]) -> list[str]:
    """The report's section for one benchmark's figures, rendered by its module's
    ``table`` and ``describe`` (a note if they cannot be shown)."""
    try:
        module = importlib.import_module(BY_NAME[name].module)
        return [module.table(result), "", module.describe(result) + "."]
    except Exception as exc:  # a report with a gap beats no report after a long run
        return [
            f"(could not render this section: {type(exc).__name__}: {exc}; the figures "
            "are in the JSON)"
        ]


def _postgres(entries: dict[str, dict[str, Any]]) -> str:
    for entry in entries.values():
        r = _ok(entry)
        if r and isinstance(r.get("machine"), dict) and r["machine"].get("postgres"):
            m = r["machine"]
            return f"{m['postgres']} ({m.get('server', 'embedded')})"
    return "n/a"


def render(report: dict[str, Any]) -> str:
    entries = report["benchmarks"]
    m = report["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"])
    load_end = ", ".join(f"{x:.2f}" for x in report["load_average_end"])
    make = "" if report["partial"] else " (what `make bench` runs)"
    lines = [
        "# mdp benchmark results",
        "",
        f"Command: `{report['command']}`{make}, started {report['date']}; total wall time "
        f"{report['wall_s'] / 60:.1f} min.",
        "",
        markdown_table(
            ("machine", ""),
            [
                ("CPU", m["cpu"]),
                ("cores", m["cores"]),
                ("RAM", f"{m['ram_gib']} GiB"),
                ("OS", m["os"]),
                ("Python", m["python"]),
                ("PostgreSQL", _postgres(entries)),
                ("load average at start (1, 5, 15 min)", load),
                ("load average at end", load_end),
            ],
        ),
        "",
        "The machine is shared (other work was running: see the load averages), so the "
        "figures are medians and each is shown against a reference measured in the same run.",
        "",
        "## Targets",
        "",
        markdown_table(
            ("target", "benchmark", "measured", "reference", "ratio", "result"),
            [tuple(row.values()) for row in report["summary"]],
        ),
    ]
    for bench in BENCHMARKS:
        entry = entries.get(bench.name)
        if entry is None:
            continue
        lines += ["", f"## {bench.title} (`{bench.name}`)", ""]
        result = _ok(entry)
        if result is None:
            lines.append(f"{entry['status']}.")
            continue
        lines += entry.get("section") or section(bench.name, result)
        lines.append(f"Wall time {entry['wall_s']:.0f} s.")
    lines += [
        "",
        "## Wall time",
        "",
        markdown_table(
            ("benchmark", "status", "seconds"),
            [(n, e["status"], f"{e['wall_s']:.0f}") for n, e in entries.items()]
            + [("total", "", f"{report['wall_s']:.0f}")],
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short versions of everything")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BY_NAME)}")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite results.md from results.json (no measuring)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.out, args.quick)
        return
    if args.render:
        stem = HERE / "results"
        report = json.loads(stem.with_suffix(".json").read_text())
        report["summary"] = summary(report["benchmarks"])
        _write(stem, report)
        return
    names = list(BY_NAME)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            parser.error(
                f"--only: unknown benchmark(s) {', '.join(unknown)}; expected "
                f"some of {', '.join(BY_NAME)}"
            )
    partial = args.quick or args.only is not None
    command = shlex.join([".venv/bin/python", "-m", "benchmarks", *(argv or sys.argv[1:])])
    host = machine()
    start = time.perf_counter()
    date = now_iso()
    entries = {name: run_one(BY_NAME[name], args.quick) for name in names}
    report = {
        "command": command,
        "date": date,
        "partial": partial,
        "machine": host,
        "load_average_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - start,
        "summary": summary(entries),
        "benchmarks": entries,
    }
    if not partial:
        for name, entry in entries.items():
            if entry["result"] is not None:
                write_json(name, entry["result"])
    _write(HERE / ("results-partial" if partial else "results"), report)


def _write(stem: Path, report: dict[str, Any]) -> None:
    """Write ``<stem>.json`` (first: the figures survive a rendering problem), then
    ``<stem>.md``; print the report."""
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = render(report)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


if __name__ == "__main__":
    main()
