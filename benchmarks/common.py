"""Plumbing shared by the benchmarks: the machine, a throw-away database, medians, tables, JSON.

Every benchmark module has ``run(quick=False) -> dict`` (the figures, JSON-ready) and
``main()`` (prints a table and writes ``benchmarks/results/<name>.json``); ``python -m
benchmarks`` runs them all and writes one report.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from mdp_core.channel import Channel
from mdp_core.coordinator import WriteCoordinator
from mdp_core.logs import configure_logging
from mdp_core.settings import get_settings
from mdp_core.store.database import STAGE_DDL, STAGE_TABLES, Database
from mdp_core.store.embedded import EmbeddedServer
from mdp_core.store.sinks import BarsSink, QuotesSink

__all__ = [
    "RESULTS_DIR",
    "bench_database",
    "consume_batches",
    "copy_raw",
    "machine",
    "markdown_table",
    "median",
    "now_iso",
    "percentile",
    "quiet_logging",
    "say",
    "server_version",
    "write_json",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on, including the load average right now."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average": [round(x, 2) for x in load],
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def median(values: Iterable[float]) -> float:
    """The median (raises ``ValueError`` on no values)."""
    data = list(values)
    if not data:
        raise ValueError("median of no values")
    return float(statistics.median(data))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, by linear interpolation
    (numpy's default); ``nan`` for no values."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def server_version(db: Database) -> str:
    return str(await db.pool.fetchval("SHOW server_version"))


@asynccontextmanager
async def bench_database(max_size: int = 5) -> AsyncIterator[Database]:
    """A migrated, empty database used only by one benchmark, removed afterwards.

    A dedicated embedded server in a temporary directory or, when ``MDP_PG_DSN`` is set, a
    temporary database created on that server (and dropped after)."""
    secret = get_settings().pg_dsn
    if secret is not None:
        admin_dsn = secret.get_secret_value()
        name = f"mdp_bench_{uuid.uuid4().hex[:8]}"  # a code-made identifier, not user input
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
            try:
                async with Database.connect(dsn, max_size=max_size) as db:
                    yield db
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        return
    with tempfile.TemporaryDirectory(prefix="mdp-bench-") as home:
        server = EmbeddedServer(Path(home) / "pg")
        try:
            async with Database.connect(home=home, max_size=max_size) as db:
                yield db
        finally:
            server.destroy()


async def consume_batches(channel: Channel[Any], coord: WriteCoordinator[Any]) -> None:
    """What ``Pipeline`` does with no operators: whole batches from the channel into the
    coordinator, until the channel closes."""
    async for batch in channel.iter_batches(coord.settings.batch_size):
        await coord.submit_many(batch)


async def copy_raw(
    dsn: str,
    table: str,
    rows: Sequence[tuple[Any, ...]],
    batch_size: int,
    connections: int,
    path: str,
) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of writing prebuilt stage-layout tuples
    into ``mdp.<table>`` (``quotes`` or ``bars``) the raw way, one transaction per batch on
    ``connections`` plain connections sharing the batches: ``direct``, binary COPY straight
    into the table; ``idempotent``, binary COPY into the TEMP stage + the sinks' ``INSERT
    ... ON CONFLICT DO NOTHING``. The limits the sinks and ``mdp import`` are held to."""
    sink = {"quotes": QuotesSink, "bars": BarsSink}[table]
    stage, columns = STAGE_TABLES[table], sink.columns
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    try:
        for conn in conns:
            await conn.execute(STAGE_DDL)
        batches = iter([rows[i : i + batch_size] for i in range(0, len(rows), batch_size)])

        async def worker(conn: asyncpg.Connection) -> None:
            for batch in batches:  # shared iterator: each batch goes to one worker
                async with conn.transaction():
                    if path == "direct":
                        await conn.copy_records_to_table(
                            table, records=batch, columns=columns, schema_name="mdp"
                        )
                    else:
                        await conn.copy_records_to_table(stage, records=batch, columns=columns)
                        await conn.execute(sink._insert_sql)

        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        for conn in conns:
            await conn.close()


def say(name: str, text: str) -> None:
    """A progress line of benchmark ``name`` on stderr (stdout is for its figures)."""
    print(f"{name}: {text}", file=sys.stderr, flush=True)


def write_json(name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` to ``benchmarks/results/<name>.json``; return the path."""
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (readable as plain text too): numbers are
    right-aligned, everything else left-aligned."""
    body = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        bool(body) and all(_looks_numeric(row[i]) for row in body) for i in range(len(headers))
    ]

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([fmt(headers), rule, *(fmt(row) for row in body)])


def _looks_numeric(cell: str) -> bool:
    text = cell.replace(",", "").replace("x", "").replace("%", "").strip()
    for suffix in (" ms", " us", " s", " MiB", "/s"):
        text = text.removesuffix(suffix)
    try:
        float(text)
    except ValueError:
        return cell in ("", "-", "n/a")
    return True


def quiet_logging() -> None:
    """Library logs at WARNING and above only, so the benchmark's own output stays readable."""
    configure_logging("WARNING")


_LISTENING = re.compile(r"simulated IB Gateway on ([\d.]+):(\d+)")


@contextmanager
def gateway_subprocess(*options: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """``mdp gateway --port 0 OPTIONS`` in a subprocess: its port (read from the line it logs
    once listening) and the process, terminated (killed after 10 s) when the block ends."""
    command = [sys.executable, "-m", "mdp_core.cli", "gateway", "--port", "0", *options]
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
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
